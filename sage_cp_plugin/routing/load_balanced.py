"""Least outstanding work: in-flight requests plus the queue vLLM itself reports.

`power_of_two=True` samples two candidates and takes the less loaded (Mitzenmacher): near
least-loaded quality at O(1) cost, and no herd onto one instance when load signals lag.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router, least_loaded
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class LoadBalancedRouter(Router):
    name = "load_balanced"

    def __init__(self, power_of_two: bool = False, seed: int | None = 0) -> None:
        super().__init__()
        self.power_of_two = power_of_two
        self._rng = random.Random(seed)
        self._rotate = 0

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        if self.power_of_two and len(candidates) > 2:
            a, b = self._rng.sample(range(len(candidates)), 2)
            x, y = candidates[a], candidates[b]
            return x if x.load <= y.load else y
        self._rotate += 1
        return least_loaded(candidates, self._rotate)
