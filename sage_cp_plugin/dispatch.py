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
from typing import TYPE_CHECKING

from sage_cp_plugin.attempts import Attempts
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.planning import (
    Launch,
    LaunchSplit,
    SplitRule,
    WaitForCapacity,
    WaitUntil,
    plan_head,
)
from sage_cp_plugin.state import FleetSnapshot, InstanceState

if TYPE_CHECKING:
    from sage_cp_plugin.manager import ControlPlaneManager

logger = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, manager: ControlPlaneManager) -> None:
        self.m = manager
        self._event = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self.attempts = Attempts(manager, self.wake)
        self._policy_seen: tuple[int, int] | None = None  # (id(policy), version) last keyed

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

    # -- the fleet view a plan reads (planning.FleetView) ------------------------------------
    @property
    def fleet(self) -> FleetSnapshot:
        return self.m.fleet

    @property
    def request_timeout_s(self) -> float:
        return self.m.request_timeout_s

    def has_room(self, state: InstanceState, item: QueuedRequest) -> bool:
        return self.m.has_room(state, item)

    def filter_by_phase(
        self, candidates: list[InstanceState], item: QueuedRequest
    ) -> list[InstanceState]:
        pd = self.m.pd_router
        return candidates if pd is None else pd.filter_by_phase(candidates, item.phase)

    def no_instance_reason(self, item: QueuedRequest) -> str:
        return self._no_instance_reason(item)

    def routable(self, item: QueuedRequest) -> list[InstanceState]:
        """Healthy instances that serve the request's model and kind (any capacity)."""
        m = self.m
        routable: list[InstanceState] = []
        excluded = item.excluded
        kept_excluded: list[InstanceState] = []
        for s in m.eligible(item.pool):
            # Inlined `InstanceState.routable`: this loop is the hot path of a decision.
            if not s.healthy or s.draining:
                continue
            if s.circuit_open and not m.health.maybe_half_open(s, m.fleet.now):
                continue
            if excluded and s.instance_id in excluded:
                kept_excluded.append(s)
                continue
            routable.append(s)
        # Retry elsewhere when possible; the excluded instances are the last resort.
        return routable or kept_excluded

    # -- one round: plan the head of each pool, apply, repeat ------------------------------
    def dispatch_round(self) -> None:
        m = self.m
        if not m.running:
            return
        now = m.now()
        m.fleet.now = now
        policy = m.scheduling_policy
        policy.tick(m.fleet, len(m.queue), now)
        seen = (id(policy), policy.version)
        if self._policy_seen is not None and seen != self._policy_seen:
            m.queue.rekey(policy.key)  # the ordering changed (adaptive switch, update_policy)
        self._policy_seen = seen
        split = (
            SplitRule(m.prefill_router, m.decode_router, m.disaggregator.wants_split)
            if m.disaggregator.enabled
            else None
        )
        for pool in m.queue.pools():
            while True:
                item = m.queue.peek(pool)
                if item is None:
                    break
                action = plan_head(item, self, policy, m.router, now, split)
                if isinstance(action, WaitUntil):
                    self._wake_at(action.when)
                    break
                if isinstance(action, WaitForCapacity):
                    break  # every eligible instance is busy: wait for a finish
                m.queue.pop(pool)
                self._dequeued(item)
                if isinstance(action, Launch):
                    self.attempts.launch(item, action.state, now)
                elif isinstance(action, LaunchSplit):
                    self.attempts.launch_pd(item, action.prefill, action.decode, now)
                else:
                    m.finish_failed(item, action.reason, action.kind)

    def _dequeued(self, item: QueuedRequest) -> None:
        hook = getattr(self.m.scheduling_policy, "on_dequeue", None)
        if hook is not None:
            hook(item)

    def _no_instance_reason(self, item: QueuedRequest) -> str:
        m = self.m
        eligible = m.eligible(item.pool)
        if not eligible:
            return (
                f"no instance serves model {item.request.model_name!r}; "
                f"models served: {', '.join(m.list_models()) or 'none'}"
            )
        states = ", ".join(
            f"{s.instance_id}({'draining' if s.draining else 'circuit open' if s.circuit_open else 'unhealthy'})"
            for s in eligible
        )
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
