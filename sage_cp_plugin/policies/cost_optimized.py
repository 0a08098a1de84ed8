"""Cheapest instance that still meets the request's SLO and cost budget.

Ordering is FIFO; the decision is *where*. Each instance may carry a price per 1k tokens or
per GPU-hour (unpriced instances cost 0: on-prem capacity that is already paid for). At
admission, a `cost_budget` that no instance serving the model can meet is rejected with
the cheapest achievable price. At dispatch, among instances with capacity, the cheapest
one whose predicted finish meets the deadline wins; when the cheap ones are busy the
request waits for them rather than overspending, unless its deadline would then be missed,
in which case the cheapest instance that still meets it is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sage_cp_plugin.errors import RequestRejectedError
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.state import FleetSnapshot, InstanceState

if TYPE_CHECKING:
    from sage_cp_plugin.routing.base import Router


def predicted_finish_s(state: InstanceState, item: QueuedRequest) -> float:
    """Service time on `state`, stretched by how busy it is (batching slows each request)."""
    base = state.predicted_service_s(item.input_tokens, item.output_tokens)
    return base * (1.0 + state.in_flight / max(1, state.capacity))


def request_cost(state: InstanceState, item: QueuedRequest) -> float:
    inst = state.instance
    tokens = item.input_tokens + item.output_tokens
    tier = item.request.billing_tier
    per_1k = inst.price_per_1k_for(tier)
    if per_1k is not None:  # fast path: no service-time prediction needed
        return per_1k * tokens / 1000.0
    if inst.price_per_gpu_hour is None:
        return 0.0
    service = state.predicted_service_s(item.input_tokens, item.output_tokens)
    price = state.price_for(tokens, service, tier)
    return 0.0 if price is None else price


class CostOptimizedPolicy(SchedulingPolicy):
    name = "cost_optimized"

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        return (item.arrival, float(item.seq))

    def admit(self, item: QueuedRequest, fleet: FleetSnapshot) -> None:
        budget = item.request.cost_budget
        if budget is None:
            return
        serving = [s for s in fleet if s.instance.serves(item.request.model_name) and s.routable]
        if not serving:
            return  # the coordinator reports the missing model/instances itself
        cheapest = min(serving, key=lambda s: request_cost(s, item))
        price = request_cost(cheapest, item)
        if price > budget:
            raise RequestRejectedError(
                f"cost_budget={budget:g} cannot be met: the cheapest achievable price for "
                f"~{item.input_tokens + item.output_tokens} tokens is {price:.6g} on instance "
                f"{cheapest.instance_id!r}"
            )

    def select_instance(
        self,
        item: QueuedRequest,
        candidates: Sequence[InstanceState],
        router: Router,
        fleet: FleetSnapshot,
    ) -> InstanceState | None:
        budget = item.request.cost_budget
        # (cost, load, position, state): tuples sort in C and never compare the states.
        ranked: list[tuple[float, float, int, InstanceState]] = []
        for i, st in enumerate(candidates):
            c = request_cost(st, item)
            if budget is None or c <= budget:
                ranked.append((c, st.load, i, st))
        if not ranked:
            return None  # affordable instances are busy: wait for one
        # Cheapest first (least loaded among equal prices); with a deadline, the first one
        # predicted to make it — usually found in the first few, so no full prediction pass.
        ranked.sort()
        best_cost, _, _, best = ranked[0]
        deadline = item.deadline
        if deadline is not None:
            now = fleet.now
            for c, _, _, st in ranked:
                if now + predicted_finish_s(st, item) <= deadline:
                    best_cost, best = c, st
                    break
        if deadline is None:
            # No deadline: rather wait for a cheaper instance that is busy right now.
            for s in fleet:
                if (
                    not s.has_capacity
                    and s.routable
                    and s.instance_id not in item.excluded
                    and s.instance.is_embedding == item.pool[1]
                    and s.instance.serves(item.request.model_name)
                    and request_cost(s, item) < best_cost
                ):
                    return None
        return best
