"""Least slack first.

slack = deadline - now - predicted service time. `now` is common to every queued request,
so ordering by ``deadline - predicted`` is the same order and keeps the key static. The
prediction comes from per-instance speeds learnt online (prefill s/token, decode s/token)
and is refreshed on the chosen instance when the request comes up for dispatch: if it can
no longer meet its objective there, `late_action` decides: ``demote`` it (the default: it
goes back into the queue ordered as work without an objective, so in an overload hopeless
work stops delaying requests that can still make theirs, and still runs), ``reject`` it with
the reason (deadlines only), or ``run`` it anyway. A TTFT objective is missed when the load
model's first token there (`first_token_s`: the prefill queued ahead plus its own uncached
prompt) comes after it: in an overload the longest prompts are the first set aside, the
rule that keeps the most objectives (Moore-Hodgson's), and a request sent to miss would
still take its share of the engine's steps from the ones behind it. A completion deadline
is missed when late even on the optimistic side (`earliest_finish_s`): it would end after
its deadline even served at its best speed.
A TTFT objective alone is a deadline on the first token: it orders like a completion
deadline of ``arrival + ttft_slo + predicted``, i.e. by its first-token deadline.

Requests without any objective have no slack to protect, only a latency to keep low: least
slack first would run the longest of them first (the least slack against the same implied
deadline), which is the order that maximises their mean latency. They are ordered instead by
their ideal finish, ``arrival + predicted + no_deadline_slack_s``: the time they would end if
served alone at arrival (the virtual finish time of fair queueing), shifted by the slack so
they run after work with an objective but cannot starve. Inside a burst the shorter ones go
first (what keeps their mean E2E low, shortest-job-first); across arrivals further apart than
their difference in service time, arrival order holds.
"""

from __future__ import annotations

from typing import Literal

from sage_cp_plugin import load_model
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy, key_ms
from sage_cp_plugin.state import FleetSnapshot, InstanceState

LateAction = Literal["run", "reject", "demote"]


class SLOAwarePolicy(SchedulingPolicy):
    name = "slo_aware"

    def __init__(
        self, late_action: LateAction = "demote", no_deadline_slack_s: float = 30.0
    ) -> None:
        super().__init__()
        if late_action not in ("run", "reject", "demote"):
            raise ValueError(
                f"late_action must be 'run', 'reject' or 'demote', got {late_action!r}"
            )
        if no_deadline_slack_s <= 0:
            raise ValueError(f"no_deadline_slack_s must be positive, got {no_deadline_slack_s!r}")
        self.late_action: LateAction = late_action
        self.no_deadline_slack_s = no_deadline_slack_s

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        req = item.request
        if item.demoted or (item.deadline is None and req.ttft_slo_ms is None):
            # No objective: ideal finish, shifted by the slack (see the module doc).
            return (item.arrival + item.predicted_s + self.no_deadline_slack_s, float(item.seq))
        target = self._target(item)
        return (target - item.predicted_s, float(item.seq))

    def engine_priority(self, item: QueuedRequest) -> int:
        # Least slack first inside the engine too: the key's time in milliseconds.
        return key_ms(self.key(item)[0])

    @staticmethod
    def _target(item: QueuedRequest) -> float:
        """The time by which a request with an objective should be done."""
        if item.deadline is not None:
            return item.deadline
        ttft_slo_ms = item.request.ttft_slo_ms
        assert ttft_slo_ms is not None  # `key` handles requests without an objective
        # A TTFT objective alone: the first token must come by then; scale to a completion
        # target so it orders against e2e deadlines.
        return item.arrival + ttft_slo_ms / 1000.0 + item.predicted_s

    def demote(
        self,
        item: QueuedRequest,
        state: InstanceState,
        now: float,
        fleet: FleetSnapshot | None = None,
    ) -> bool:
        """With ``late_action="demote"``: True when the request would miss its objective on
        `state`. A TTFT objective is judged by the load model's predicted first token there
        (the prefill queued ahead plus its own uncached prompt, `first_token_s`): sent
        anyway, a request that misses would still take its prefill's share of the engine's
        steps from the requests behind it that can meet theirs. A completion deadline is
        judged on the optimistic side (`earliest_finish_s`): hopeless only when late even
        at the request's best speed."""
        if self.late_action != "demote":
            return False
        ttft_slo_ms = item.request.ttft_slo_ms
        if ttft_slo_ms is not None:
            if first_token_s(item, state, now, fleet) > item.arrival + ttft_slo_ms / 1000.0:
                return True
        if item.deadline is None:
            return False
        _, end = earliest_finish_s(item, state, now)
        return end > item.deadline

    def check_dispatch(self, item: QueuedRequest, state: InstanceState, now: float) -> str | None:
        if self.late_action != "reject" or item.deadline is None:
            return None
        predicted = state.predicted_service_s(item.input_tokens, item.output_tokens)
        if now + predicted > item.deadline:
            missed_by = (now + predicted - item.deadline) * 1000
            return (
                f"deadline cannot be met: slo_deadline_ms={item.request.slo_deadline_ms:g}, "
                f"waited {(now - item.arrival) * 1000:.0f} ms, predicted service "
                f"{predicted * 1000:.0f} ms on {state.instance_id} (late by {missed_by:.0f} ms); "
                "rejected by slo_aware late_action='reject'"
            )
        return None


def earliest_finish_s(item: QueuedRequest, state: InstanceState, now: float) -> tuple[float, float]:
    """(first token, completion) of `item` sent to `state` now, on the optimistic side of the
    load model: its prefill starts after the prefill queued ahead of it
    (`load_model.queue_wait_s`, the same estimate the dispatcher and the adaptive limit use);
    its own prompt is taken as free (it may be cached) and the rest of its service as the
    best case alone (`item.predicted_s`). A request late even by this cannot meet its
    objective there unless the model overestimates the queue ahead of it."""
    start = now + load_model.queue_wait_s(state, now)
    return start, start + item.predicted_s


def first_token_s(
    item: QueuedRequest, state: InstanceState, now: float, fleet: FleetSnapshot | None = None
) -> float:
    """When `item` sent to `state` now gets its first token by the load model: the prefill
    queued ahead of it and its own prompt less what `fleet`'s prefix-cache view says
    `state` holds of it (`load_model.predicted_ttft_s`, what the routers rank by)."""
    view = fleet.cache_view if fleet is not None else None
    cached = view.cached_tokens(item, [state])[0] if view is not None else 0
    return now + load_model.predicted_ttft_s(state, item.input_tokens - cached, now)
