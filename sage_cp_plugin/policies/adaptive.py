"""Switches between the other policies from observed load and SLO pressure.

Re-evaluated at most every `evaluate_interval_s` on the dispatch path (O(1) work: the
signals are running counters). The rules, in order:
1. SLO pressure — recent SLO attainment below `slo_target`, or queued requests carrying
   deadlines while the fleet is busy — -> ``slo_aware``;
2. mixed priorities waiting while the fleet is busy -> ``priority``;
3. light load (utilisation below `low_load`) and priced instances -> ``cost_optimized``;
4. otherwise ``fifo``.
Every switch is logged with its reason and kept in `switches` (exported as metrics).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.policies.cost_optimized import CostOptimizedPolicy
from sage_cp_plugin.policies.fifo import FIFOPolicy
from sage_cp_plugin.policies.priority import PriorityPolicy
from sage_cp_plugin.policies.slo_aware import SLOAwarePolicy
from sage_cp_plugin.state import FleetSnapshot, InstanceState

if TYPE_CHECKING:
    from sage_cp_plugin.routing.base import Router

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicySwitch:
    at: float
    old: str
    new: str
    reason: str


class AdaptivePolicy(SchedulingPolicy):
    name = "adaptive"

    def __init__(
        self,
        evaluate_interval_s: float = 0.5,
        slo_target: float = 0.95,
        high_load: float = 0.8,
        low_load: float = 0.5,
        window: int = 200,
        aging_s: float | None = 30.0,
        late_action: str = "run",
    ) -> None:
        super().__init__()
        if not 0 < low_load <= high_load:
            raise ValueError(f"need 0 < low_load <= high_load, got {low_load!r}, {high_load!r}")
        self.evaluate_interval_s = evaluate_interval_s
        self.slo_target = slo_target
        self.high_load = high_load
        self.low_load = low_load
        self.policies: dict[str, SchedulingPolicy] = {
            "fifo": FIFOPolicy(),
            "priority": PriorityPolicy(aging_s=aging_s),
            "slo_aware": SLOAwarePolicy(late_action=late_action),  # type: ignore[arg-type]
            "cost_optimized": CostOptimizedPolicy(),
        }
        self.active: SchedulingPolicy = self.policies["fifo"]
        self.switches: list[PolicySwitch] = []
        self._recent: deque[bool] = deque(maxlen=window)
        self._next_eval = float("-inf")
        # Running counts of what waits, maintained by the coordinator via note_* hooks.
        self._queued_with_deadline = 0
        self._queued_by_priority: dict[int, int] = {}

    # -- delegation ------------------------------------------------------------------------
    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        return self.active.key(item)

    def engine_priority(self, item: QueuedRequest) -> int:
        return self.active.engine_priority(item)

    def admit(self, item: QueuedRequest, fleet: FleetSnapshot) -> None:
        # Budgets are a promise whatever the current mode: always enforce them.
        self.policies["cost_optimized"].admit(item, fleet)
        self._queued_with_deadline += item.deadline is not None
        p = int(item.request.priority)
        self._queued_by_priority[p] = self._queued_by_priority.get(p, 0) + 1

    def check_dispatch(self, item: QueuedRequest, state: InstanceState, now: float) -> str | None:
        return self.active.check_dispatch(item, state, now)

    def demote(
        self,
        item: QueuedRequest,
        state: InstanceState,
        now: float,
        fleet: FleetSnapshot | None = None,
    ) -> bool:
        return self.active.demote(item, state, now, fleet)

    def select_instance(
        self,
        item: QueuedRequest,
        candidates: Sequence[InstanceState],
        router: Router,
        fleet: FleetSnapshot,
    ) -> InstanceState | None:
        return self.active.select_instance(item, candidates, router, fleet)

    def on_dequeue(self, item: QueuedRequest) -> None:
        self._queued_with_deadline -= item.deadline is not None
        p = int(item.request.priority)
        self._queued_by_priority[p] = max(0, self._queued_by_priority.get(p, 0) - 1)

    def observe(self, item: QueuedRequest, state: InstanceState, slo_met: bool | None) -> None:
        if slo_met is not None:
            self._recent.append(slo_met)
        self.active.observe(item, state, slo_met)

    def describe(self) -> str:
        return f"adaptive({self.active.name})"

    # -- switching -------------------------------------------------------------------------
    def tick(self, fleet: FleetSnapshot, queue_depth: int, now: float) -> None:
        if now < self._next_eval:
            return
        self._next_eval = now + self.evaluate_interval_s
        capacity = max(1, fleet.total_capacity())
        utilisation = (fleet.total_in_flight() + queue_depth) / capacity
        attainment = sum(self._recent) / len(self._recent) if self._recent else 1.0
        priorities_waiting = sum(1 for c in self._queued_by_priority.values() if c > 0)
        priced = any(
            s.instance.price_per_1k_tokens is not None or s.instance.price_per_gpu_hour is not None
            for s in fleet
        )
        busy = utilisation >= self.high_load or queue_depth > 0
        if len(self._recent) >= 10 and attainment < self.slo_target:
            target, reason = "slo_aware", f"SLO attainment {attainment:.1%} < {self.slo_target:.0%}"
        elif busy and self._queued_with_deadline > 0:
            target, reason = (
                "slo_aware",
                f"{self._queued_with_deadline} queued requests carry deadlines at "
                f"utilisation {utilisation:.0%}",
            )
        elif busy and priorities_waiting > 1:
            target, reason = (
                "priority",
                f"{priorities_waiting} priority classes waiting at utilisation {utilisation:.0%}",
            )
        elif utilisation < self.low_load and priced:
            target, reason = "cost_optimized", f"light load (utilisation {utilisation:.0%})"
        else:
            target, reason = (
                "fifo",
                f"no pressure (utilisation {utilisation:.0%}, attainment {attainment:.1%})",
            )
        if target != self.active.name:
            self.switches.append(PolicySwitch(now, self.active.name, target, reason))
            logger.info("adaptive policy: %s -> %s (%s)", self.active.name, target, reason)
            self.active = self.policies[target]
            self.version += 1
