"""Locality: requests whose prompts start alike go to the same instance (hash of the
prompt's first `prefix_chars` characters on a bounded-load consistent-hash ring). The home
gives way when another instance would serve the first token sooner by more than a decode
step (`give_way`)."""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.give_way import home_unless_slower
from sage_cp_plugin.routing.hash_ring import HashRing
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class LocalityRouter(Router):
    name = "locality"

    def __init__(self, prefix_chars: int = 512, epsilon: float = 0.25, vnodes: int = 64) -> None:
        super().__init__()
        if prefix_chars <= 0:
            raise ValueError(f"prefix_chars must be positive, got {prefix_chars!r}")
        self.prefix_chars = prefix_chars
        self.epsilon = epsilon
        self._ring = HashRing(vnodes)

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        key = "prefix:" + item.request.prompt_text()[: self.prefix_chars]
        home = self._ring.lookup(key, candidates, self.epsilon)
        return None if home is None else home_unless_slower(item, home, candidates, fleet)
