"""The dispatcher: event-driven loop that moves requests from the queue onto instances
(what to do with each head is `planning.plan_head`'s pure decision; running them is
`attempts.Attempts`' job).

Woken by an asyncio.Event (submit, finish, health change, retry timer); a round pops, per
pool, while the head request has an eligible instance with capacity. Cost per dispatched
request: O(log queue) for the heap and O(instances) for filtering and routing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sage_cp_plugin import load_model, whole_placement
from sage_cp_plugin.attempts import Attempts
from sage_cp_plugin.health import HealthMonitor
from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.planning import (
    Demote,
    Launch,
    LaunchSplit,
    WaitForCapacity,
    WaitUntil,
    plan_head,
)
from sage_cp_plugin.pools import InstancePools
from sage_cp_plugin.results import ResultStore
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.strategies import Strategies
from sage_cp_plugin.tracing import spans as tracing
from sage_cp_plugin.types import (
    ExecutionInstanceType,
)

logger = logging.getLogger(__name__)


class Dispatcher:
    """Reads the queue, the pools and the strategies in force; ends requests that cannot
    run through `results`; hands the others to `attempts`."""

    def __init__(
        self,
        *,
        queue: PendingQueue,
        pools: InstancePools,
        strategies: Strategies,
        health: HealthMonitor,
        results: ResultStore,
        attempts: Attempts,
        clock: Callable[[], float],
        is_running: Callable[[], bool],
        request_timeout_s: float,
    ) -> None:
        self.queue = queue
        self.pools = pools
        self.fleet = pools.fleet
        self.strategies = strategies
        self.health = health
        self.results = results
        self.clock = clock
        self.is_running = is_running
        self.request_timeout_s = request_timeout_s
        self._event = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.attempts = attempts
        # (id(policy), version) of every policy in use when the queue was last keyed (from
        # the start: a change before the first round must re-key what was admitted before it)
        self._policy_seen = self._policies_in_use()
        # The pure decision, an attribute so a probe can time it on one dispatcher
        # (virtual/decision_cost.py) without touching the module.
        self.plan_head = plan_head

    def _policies_in_use(self) -> tuple[tuple[int, int], ...]:
        return tuple((id(p), p.version) for p in self.strategies.policies())

    # -- waking ----------------------------------------------------------------------------
    def wake(self) -> None:
        self._event.set()

    def _wake_at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.wake()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            self.dispatch_round()

    # -- one round -------------------------------------------------------------------------
    def candidates(self, item: QueuedRequest) -> tuple[list[InstanceState], bool]:
        """Eligible instances with capacity, and whether any eligible one is routable."""
        routable = self.routable(item)
        room = self.pools.has_room
        free = [s for s in routable if room(s, item)]
        pd = self.strategies.pd_router
        if pd is not None and item.phase is not None:
            tier = pd.filter_by_phase(free or routable, item.phase)
            free = [s for s in tier if room(s, item)]
        return free, bool(routable)

    def routable(self, item: QueuedRequest) -> list[InstanceState]:
        """Healthy instances that serve the request's model and kind (any capacity)."""
        routable: list[InstanceState] = []
        excluded = item.excluded
        kept_excluded: list[InstanceState] = []
        health, fleet = self.health, self.fleet
        for s in self.pools.eligible(item.pool):
            # Inlined `InstanceState.routable`: this loop is the hot path of a decision.
            if not s.healthy or s.draining:
                continue
            if s.circuit_open and not health.maybe_half_open(s, fleet.now):
                continue
            limit = s.instance.max_prompt_tokens
            if limit is not None and item.input_tokens > limit:
                continue  # chunked prefill off: vLLM cannot schedule a longer prompt
            if excluded and s.instance_id in excluded:
                kept_excluded.append(s)
                continue
            routable.append(s)
        # Retry elsewhere when possible; the excluded instances are the last resort.
        return routable or kept_excluded

    def routable_and_free(
        self, item: QueuedRequest
    ) -> tuple[list[InstanceState], list[InstanceState]]:
        """`routable(item)` and those of them with room (`pools.has_room`), in one pass over
        the pool: the per-instance part of every decision (`planning.plan_head` uses it).
        Without adaptive limits or urgent headroom, `has_room` is inlined (the same tests)."""
        pools = self.pools
        excluded = item.excluded
        room = pools.has_room if pools.limits is not None or item.urgent else None
        table = pools.table
        if table is not None and room is None and not excluded:
            # The common case, answered from the fleet's arrays (rows reread only for the
            # instances that changed): no per-instance work in the decision.
            pool = item.pool
            both = table.routable_and_free(pool, pools.eligible(pool))
            if both is not None:
                return both
        health, fleet = self.health, self.fleet
        routable: list[InstanceState] = []
        free: list[InstanceState] = []
        kept: list[InstanceState] = []
        kept_free: list[InstanceState] = []
        tokens = item.input_tokens
        for s in pools.eligible(item.pool):
            if not s.healthy or s.draining:
                continue
            if s.circuit_open and not health.maybe_half_open(s, fleet.now):
                continue
            inst = s.instance
            limit = inst.max_prompt_tokens
            if limit is not None and tokens > limit:
                continue
            if room is not None:
                ok = room(s, item)
            elif s.in_flight + s.peer_in_flight >= inst.slot_limit:
                ok = False
            else:
                ok = True
                target = inst.decode_target_s
                if target is not None and s.in_flight > 0:
                    tpot = s.decode_s_per_token.value
                    ok = tpot is None or not tpot > target
            if excluded and s.instance_id in excluded:
                kept.append(s)
                if ok:
                    kept_free.append(s)
                continue
            routable.append(s)
            if ok:
                free.append(s)
        # Retry elsewhere when possible; the excluded instances are the last resort.
        return (routable, free) if routable else (kept, kept_free)

    def _pd_pair(self, item: QueuedRequest) -> tuple[InstanceState, InstanceState] | str | None:
        """(prefill, decode) for a split request; "wait" when both pools exist but one is
        full; None when the request is not split (no PD pools, or the trigger says no)."""
        pools, st = self.pools, self.strategies
        routable = self.routable(item)
        pre = [s for s in routable if s.instance.instance_type is ExecutionInstanceType.PREFILLING]
        dec = [s for s in routable if s.instance.instance_type is ExecutionInstanceType.DECODING]
        if not pre or not dec:
            return None
        pre_free = [s for s in pre if pools.has_room(s, item)]
        dec_free = [s for s in dec if pools.has_room(s, item)]
        if st.disaggregator.predicted:
            return self._predicted_pair(item, routable, pre_free, dec_free)
        if not dec_free:
            return "wait"
        decode = st.decode_router.select(item, dec_free, self.fleet)
        if decode is None or not st.disaggregator.wants_split(item, decode):
            return None
        if not pre_free:
            return "wait"
        prefill = st.prefill_router.select(item, pre_free, self.fleet)
        return None if prefill is None else (prefill, decode)

    def _predicted_pair(
        self,
        item: QueuedRequest,
        routable: list[InstanceState],
        pre_free: list[InstanceState],
        dec_free: list[InstanceState],
    ) -> tuple[InstanceState, InstanceState] | None:
        """The `predicted` trigger: split only when it beats running the request whole on
        the instance that could start it soonest; never wait for a pool (no "wait")."""
        pools, st = self.pools, self.strategies
        if not pre_free or not dec_free:
            return None
        decode = st.decode_router.select(item, dec_free, self.fleet)
        prefill = st.prefill_router.select(item, pre_free, self.fleet)
        if decode is None or prefill is None:
            return None
        now = self.fleet.now  # the round's time: one plan, one clock reading
        # The whole path it would take: the instances `whole_candidates` leaves it.
        whole = self.whole_candidates(
            item, [s for s in routable if pools.has_room(s, item)], routable
        )
        best = min(whole, key=lambda s: self._wait_s(s, now), default=None)
        limits = pools.limits
        limit = limits.of(decode).current if limits is not None else decode.capacity
        ok = st.disaggregator.split_pays(
            item, prefill, decode, whole=best, decode_limit=limit, now=now
        )
        return (prefill, decode) if ok else None

    @staticmethod
    def _wait_s(s: InstanceState, now: float) -> float:
        """Predicted wait before `s` starts a new request: the load model's prefill ahead
        of it (the same estimate the split decision uses for the prefill pool)."""
        return load_model.queue_wait_s(s, now)

    # -- the fleet view a plan reads (planning.FleetView) ----------------------------------
    def has_room(self, state: InstanceState, item: QueuedRequest) -> bool:
        return self.pools.has_room(state, item)

    def filter_by_phase(
        self, candidates: list[InstanceState], item: QueuedRequest
    ) -> list[InstanceState]:
        pd = self.strategies.pd_router
        return candidates if pd is None else pd.filter_by_phase(candidates, item.phase)

    def no_instance_reason(self, item: QueuedRequest) -> str:
        return self._no_instance_reason(item)

    def whole_candidates(
        self, item: QueuedRequest, free: list[InstanceState], routable: list[InstanceState]
    ) -> list[InstanceState]:
        """Where a request running whole may go (`whole_placement.whole_candidates`); empty:
        it waits in the queue."""
        return whole_placement.whole_candidates(
            item, free, routable, self.pools, self.strategies.disaggregator, self.fleet.now
        )

    # -- one round: plan the head of each pool (planning.plan_head), apply, repeat ---------
    def dispatch_round(self) -> None:
        if not self.is_running():
            return
        queue, fleet, results, strategies = self.queue, self.fleet, self.results, self.strategies
        now = self.clock()
        fleet.now = now
        policy = strategies.scheduling_policy
        policy.tick(fleet, len(queue), now)
        lane_policies = strategies.lane_policies()
        for lane, lane_policy in lane_policies.items():
            lane_policy.tick(fleet, queue.lane_depth(lane), now)
        seen = self._policies_in_use()
        if seen != self._policy_seen:
            # An ordering changed (adaptive switch, update_policy, an arm's new policy).
            queue.rekey(strategies.queue_key)
        self._policy_seen = seen
        split = self._pd_pair if strategies.disaggregator.enabled else None
        router = strategies.router
        for pool in queue.pools():
            # A lane may have a policy of its own; every item of a heap is in the same lane.
            ordering = (lane_policies.get(pool[3]) if pool[3] is not None else None) or policy
            while True:
                item = queue.peek(pool)
                if item is None:
                    break
                action = self.plan_head(item, self, ordering, router, now, split)
                if isinstance(action, WaitUntil):
                    self._wake_at(action.when)
                    break
                if isinstance(action, WaitForCapacity):
                    break  # every eligible instance is busy: wait for a finish
                queue.pop(pool)
                if isinstance(action, Demote):
                    item.demoted = True  # never again: the next plan launches it
                    item.key = ordering.key(item)  # its lane's policy
                    queue.push(item)
                    continue
                self._dequeued(item)
                if item.trace is not None and item.trace.recording:
                    self._trace_decision(item, action, now)
                if isinstance(action, Launch):
                    self.attempts.launch(item, action.state, now)
                elif isinstance(action, LaunchSplit):
                    self.attempts.launch_pd(item, action.prefill, action.decode, now)
                else:
                    results.finish_failed(item, action.reason, action.kind)

    def _trace_decision(self, item: QueuedRequest, action: object, now: float) -> None:
        """The decision span (tracing on only). The alternatives are read without
        `routable`/`candidates`, which may half-open a circuit: tracing must not change a
        decision. Each is scored by the load model's predicted wait, best first."""
        room = self.pools.has_room
        free = [s for s in self.pools.eligible(item.pool) if s.routable and room(s, item)]
        scored = sorted((load_model.queue_wait_s(s, now), s.instance_id) for s in free)
        tracing.on_dispatch(
            item,
            action,
            policy=self.strategies.policy_for(item).describe(),
            router=self.strategies.routing_strategy,
            candidates=[(iid, wait) for wait, iid in scored],
        )

    def _dequeued(self, item: QueuedRequest) -> None:
        hook = getattr(self.strategies.policy_for(item), "on_dequeue", None)
        if hook is not None:
            hook(item)

    def _no_instance_reason(self, item: QueuedRequest) -> str:
        eligible = self.pools.eligible(item.pool)
        if not eligible:
            return (
                f"no instance serves model {item.request.model_name!r}; "
                f"models served: {', '.join(self.pools.list_models()) or 'none'}"
            )

        def why(s: InstanceState) -> str:
            limit = s.instance.max_prompt_tokens
            if limit is not None and item.input_tokens > limit:
                return f"prompt of ~{item.input_tokens} tokens over its {limit} without chunked prefill"
            return "draining" if s.draining else "circuit open" if s.circuit_open else "unhealthy"

        states = ", ".join(f"{s.instance_id}({why(s)})" for s in eligible)
        extra = f"; last error: {item.last_error}" if item.last_error else ""
        return f"no healthy instance can serve the request: {states}{extra}"

    # -- attempts in flight ----------------------------------------------------------------
    def in_flight_count(self) -> int:
        return self.attempts.in_flight_count()

    def instance_of(self, request_id: str) -> str | None:
        return self.attempts.instance_of(request_id)

    def cancel(self, request_id: str, reason: str) -> bool:
        return self.attempts.cancel(request_id, reason)

    async def cancel_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.attempts.cancel_all()

    def describe(self) -> dict[str, str]:
        """Request id -> instance id, for every attempt in flight."""
        return self.attempts.describe()
