"""The scheduling-policy interface: *when* a request runs, and (optionally) where.

A policy orders the pending queue through a static key (lower runs first), may refuse a
request at admission or when it comes up for dispatch, and may override the router's
instance choice (the cost-optimized policy does). Decisions are pure functions of the
request and the fleet snapshot: no I/O, no awaits, no locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sage_cp_plugin.errors import RequestRejectedError
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import ExecutionInstance, RequestMetadata, SchedulingDecision

if TYPE_CHECKING:
    from sage_cp_plugin.routing.base import Router


class SchedulingPolicy:
    """Base class; subclasses override `key` and whichever hooks they need."""

    name: str = "base"

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"unexpected options for policy {self.name!r}: {sorted(options)}")
        # Bumped whenever the ordering changes, so the queue knows to re-key.
        self.version = 0

    # -- ordering --------------------------------------------------------------------------
    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        """Static sort key; lower runs first. Must not depend on the current time."""
        return (float(item.seq),)

    def engine_priority(self, item: QueuedRequest) -> int:
        """vLLM's integer request priority (lower runs earlier) for an engine started with
        `--scheduling-policy priority`, so the engine's own queue (and its choice of whom
        to preempt when KV runs out) follows this policy's order too.

        vLLM breaks ties by arrival at the engine, which is our dispatch order; so the
        default, 0 for everyone, keeps exactly the order this policy dispatched in. Policies
        whose order is not arrival override it with their key, as an integer."""
        return 0

    # -- admission and dispatch gates ------------------------------------------------------
    def admit(self, item: QueuedRequest, fleet: FleetSnapshot) -> None:
        """Raise `RequestRejectedError` to refuse a request before it is queued."""

    def check_dispatch(self, item: QueuedRequest, state: InstanceState, now: float) -> str | None:
        """Return a reason to fail the request instead of running it on `state`."""
        return None

    def demote(
        self,
        item: QueuedRequest,
        state: InstanceState,
        now: float,
        fleet: FleetSnapshot | None = None,
    ) -> bool:
        """Whether `item`, about to run on `state`, should instead be re-queued in the order
        of work without an objective (its objective can no longer be met). `key` must
        honour `item.demoted`; a demoted request is never demoted again. `fleet` (its
        prefix-cache view) tells how much of the prompt `state` may hold."""
        return False

    def select_instance(
        self,
        item: QueuedRequest,
        candidates: Sequence[InstanceState],
        router: Router,
        fleet: FleetSnapshot,
    ) -> InstanceState | None:
        """Pick among candidates that have capacity; None means wait for capacity."""
        return router.select(item, candidates, fleet)

    # -- feedback --------------------------------------------------------------------------
    def tick(self, fleet: FleetSnapshot, queue_depth: int, now: float) -> None:
        """Called once per dispatch round (cheap); adaptive policies re-evaluate here."""

    def observe(self, item: QueuedRequest, state: InstanceState, slo_met: bool | None) -> None:
        """A request finished on `state`."""

    def describe(self) -> str:
        return self.name

    # -- the document's API ----------------------------------------------------------------
    async def schedule(
        self, request: RequestMetadata, instances: Sequence[ExecutionInstance]
    ) -> SchedulingDecision:
        """Decide where one request would run among `instances` (document compatibility).

        Uses the least-loaded view of plain `ExecutionInstance` objects; the coordinator
        itself goes through `key`/`select_instance` with live state.
        """
        from sage_cp_plugin.routing.load_balanced import LoadBalancedRouter

        if not instances:
            raise RequestRejectedError("no instances to schedule on")
        states = [InstanceState(instance=i, healthy=i.is_healthy) for i in instances]
        item = make_item(request, now=0.0, seq=0)
        fleet = FleetSnapshot({s.instance_id: s for s in states})
        chosen = self.select_instance(
            item, [s for s in states if s.routable], LoadBalancedRouter(), fleet
        )
        if chosen is None:
            raise RequestRejectedError("no healthy instance can take the request")
        return SchedulingDecision(
            request_id=request.request_id,
            target_instance_id=chosen.instance_id,
            estimated_latency_ms=chosen.predicted_service_s(item.input_tokens, item.output_tokens)
            * 1000,
            estimated_cost=chosen.price_for(
                item.input_tokens + item.output_tokens, 0.0, request.billing_tier
            )
            or 0.0,
            tensor_parallel_size=chosen.instance.tensor_parallel_size,
            pipeline_parallel_size=chosen.instance.pipeline_parallel_size,
            policy=self.name,
            reason=f"{self.name} policy",
        )


DEFAULT_OUTPUT_TOKENS = 128


def key_ms(seconds: float) -> int:
    """A time-valued sort key (loop-clock seconds) as vLLM's integer priority."""
    return round(seconds * 1000.0)


def make_item(request: RequestMetadata, *, now: float, seq: int) -> QueuedRequest:
    """Wrap a request with the numbers every decision needs."""
    deadline = None if request.slo_deadline_ms is None else now + request.slo_deadline_ms / 1000.0
    return QueuedRequest(
        request=request,
        arrival=now,
        seq=seq,
        input_tokens=request.estimated_input_tokens(),
        output_tokens=request.max_tokens or DEFAULT_OUTPUT_TOKENS,
        deadline=deadline,
        enqueued_at=now,
    )
