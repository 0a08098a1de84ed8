"""Least predicted time to first token, cache-blind (the prompt is prefilled in full).

The load is the prefill work queued on each instance, in tokens, plus the decode steps that
share its chunks (`load_model`): what sets TTFT, where counting requests does not.
Predicted TTFTs tie by the same rule as `prefix_aware`'s (`routing.tie_tolerance`: one decode
step measured against the request's TPOT headroom), and ties go to the candidate whose
running sequences the prefill delays least: with one decode step, least TTFT kept every
instance prefilling on Azure code and lost goodput to round-robin (0.974x at 110 % load,
benchmarks/results/matrix_routers_s12.md), as `prefix_aware` did before session 11.
`power_of_two=True` samples two candidates and takes the better (Mitzenmacher): O(1) per
decision at any fleet size, and no herd even if every signal lagged.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.predicted import pick_lowest_ttft
from sage_cp_plugin.routing.tie_tolerance import tie_tolerance
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class LoadBalancedRouter(Router):
    name = "load_balanced"

    def __init__(self, power_of_two: bool = False, seed: int | None = 0) -> None:
        super().__init__()
        self.power_of_two = power_of_two
        self._seed = seed

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        if self.power_of_two and len(candidates) > 2:
            # Seeded by the request, so the same request in the same state gets the same pair
            # (a decision is a pure function; no generator state advances in `select`), and by
            # the replica's index, so replicas at the same count draw different pairs.
            index = item.replica[0]
            rng = random.Random(
                hash((self._seed, item.seq, index) if index else (self._seed, item.seq))
            )
            a, b = rng.sample(range(len(candidates)), 2)
            candidates = [candidates[a], candidates[b]]
        return pick_lowest_ttft(item, candidates, None, fleet.now, tie_tolerance)
