"""User affinity: one user's requests go to one instance (its KV cache stays warm),
through consistent hashing with bounded load so a hot user cannot overload it. The home
gives way when another instance would serve the first token sooner by more than a decode
step (`give_way`); requests without a user go where `prefix_aware` would send them (least
predicted TTFT, its tie rule `routing.tie_tolerance`)."""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.give_way import cached_by_candidate, home_unless_slower
from sage_cp_plugin.routing.hash_ring import HashRing
from sage_cp_plugin.routing.predicted import pick_lowest_ttft
from sage_cp_plugin.routing.tie_tolerance import tie_tolerance
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class AffinityRouter(Router):
    name = "affinity"

    def __init__(self, epsilon: float = 0.25, vnodes: int = 64) -> None:
        super().__init__()
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.epsilon = epsilon
        self._ring = HashRing(vnodes)

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        user = item.request.user_id
        if user is None:
            # No key to be sticky about: the load model's choice (a count of requests is not
            # what a new request waits for).
            cached = cached_by_candidate(item, candidates, fleet)
            return pick_lowest_ttft(item, candidates, cached, fleet.now, tie_tolerance)
        home = self._ring.lookup(f"user:{user}", candidates, self.epsilon)
        return None if home is None else home_unless_slower(item, home, candidates, fleet)
