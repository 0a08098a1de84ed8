"""Prefix-cache-aware routing, scored against load.

score(instance) = matched_prefix_fraction - load_weight * load. The instance that already
holds most of the prompt's prefix wins while it is not much busier than the others; as a
hot prefix piles onto it, its load term grows until another instance wins and the prefix
is replicated there, so one prefix never saturates one instance. When the load imbalance
between candidates passes `balance_abs_threshold` in-flight requests the least-loaded one
is taken outright (as SGLang's cache-aware router does).

The matched fraction is exact for instances whose vLLM KV-cache events are live (the index
follows their evictions) and approximate for the others (`prefix_overlap`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router, least_loaded
from sage_cp_plugin.routing.prefix_index import PrefixIndex, chunk_hashes
from sage_cp_plugin.routing.prefix_overlap import cached_fractions
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class PrefixAwareRouter(Router):
    name = "prefix_aware"

    def __init__(
        self,
        chunk_chars: int = 256,
        max_chunks: int = 512,
        load_weight: float = 1.0,
        balance_abs_threshold: int = 32,
        max_entries: int = 200_000,
    ) -> None:
        super().__init__()
        if chunk_chars <= 0:
            raise ValueError(f"chunk_chars must be positive, got {chunk_chars!r}")
        self.chunk_chars = chunk_chars
        self.max_chunks = max_chunks
        self.load_weight = load_weight
        self.balance_abs_threshold = balance_abs_threshold
        self.index = PrefixIndex(max_entries)
        self._hashes: dict[str, list[bytes]] = {}

    def _hashes_of(self, item: QueuedRequest) -> list[bytes]:
        h = self._hashes.get(item.request_id)
        if h is None:
            h = chunk_hashes(item.request.prompt_text(), self.chunk_chars, self.max_chunks)
            self._hashes[item.request_id] = h
        return h

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        hashes = self._hashes_of(item)
        loads = [c.in_flight for c in candidates]
        if max(loads) - min(loads) > self.balance_abs_threshold:
            return least_loaded(candidates, item.seq)
        fractions = cached_fractions(item, candidates, fleet, self.index, hashes)
        if not any(fractions):
            return least_loaded(candidates, item.seq)
        best: InstanceState | None = None
        best_score = float("-inf")
        for c, f in zip(candidates, fractions, strict=True):
            score = f - self.load_weight * c.load
            if score > best_score:
                best, best_score = c, score
        return best

    def on_dispatch(self, item: QueuedRequest, state: InstanceState) -> None:
        hashes = self._hashes.pop(item.request_id, None)
        if hashes is None:
            hashes = chunk_hashes(item.request.prompt_text(), self.chunk_chars, self.max_chunks)
        self.index.insert(hashes, state.instance_id)

    def on_instance_removed(self, instance_id: str) -> None:
        self.index.remove_instance(instance_id)
