"""User affinity: one user's requests go to one instance (its KV cache stays warm),
through consistent hashing with bounded load so a hot user cannot overload it."""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router, least_loaded
from sage_cp_plugin.routing.hash_ring import HashRing
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
            return least_loaded(candidates, item.seq)
        return self._ring.lookup(f"user:{user}", candidates, self.epsilon)
