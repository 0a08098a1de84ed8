"""Which instance recently received which prompt prefixes.

Prompts are cut into fixed-size character chunks; each chunk's hash chains the previous
one, so equal hashes mean equal prefixes (like vLLM's block hashes). The index maps a
chunk hash to the instances it was sent to, bounded by an LRU over chunk hashes so memory
stays flat however many prompts pass. Matching walks the prompt's chunks from the start
and stops at the first chunk nobody has: cost grows with the prompt, not with the fleet.

Eviction model: an engine's prefix cache holds only what fits in its KV cache, evicting the
least recently used blocks. `insert(..., capacity=...)` keeps, per instance, an LRU of the
chunks it holds weighed in tokens, and forgets the oldest beyond that instance's capacity,
so the index stops pointing at prefixes the engine has long evicted.

Two kinds of chunk key, both chained (equal keys mean equal prefixes): `chunk_hashes`,
8-byte blake2b digests, the same in every process (replicas of the control plane exchange
them, `fleetshare.prefix_share`); and `local_chunk_keys`, Python's own string hash chained
through a tuple hash, about 5x cheaper to compute (hashing was most of the index's cost
per request, more than a routing decision), for an index no other process reads. Its values
differ between processes (the hash is keyed per process: prompts cannot be crafted to
collide); within one, two different prefixes collide with a chance near 2^-61 per pair, as
8-byte digests do near 2^-64. The index takes either (any hashable key).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence


def chunk_hashes(text: str, chunk_chars: int, max_chunks: int) -> list[bytes]:
    """Chained hashes of the full chunks of `text` (a trailing partial chunk is ignored)."""
    out: list[bytes] = []
    prev = b""
    n = min(len(text) // chunk_chars, max_chunks)
    blake2b = hashlib.blake2b
    if text.isascii():
        # One character is one byte: encode once and slice bytes (the same bytes per chunk,
        # so the same hashes, without a slice and an encode per chunk; it runs per decision).
        data = text[: n * chunk_chars].encode()
        for i in range(0, n * chunk_chars, chunk_chars):
            prev = blake2b(prev + data[i : i + chunk_chars], digest_size=8).digest()
            out.append(prev)
        return out
    for i in range(n):
        prev = blake2b(
            prev + text[i * chunk_chars : (i + 1) * chunk_chars].encode(), digest_size=8
        ).digest()
        out.append(prev)
    return out


def local_chunk_keys(text: str, chunk_chars: int, max_chunks: int) -> list[int]:
    """Chained keys of the full chunks of `text`, valid within this process only (see the
    module docstring): chunk i's key is the hash of (chunk i-1's key, chunk i's text)."""
    out: list[int] = []
    prev = 0
    end = min(len(text) // chunk_chars, max_chunks) * chunk_chars
    for i in range(0, end, chunk_chars):
        prev = hash((prev, text[i : i + chunk_chars]))
        out.append(prev)
    return out


class PrefixIndex:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._owners: OrderedDict[Hashable, set[str]] = OrderedDict()
        # Per instance with a capacity: chunk hash -> tokens, least recently used first.
        self._held: dict[str, OrderedDict[Hashable, float]] = {}
        self._held_tokens: dict[str, float] = {}
        # Counts changes of what `match` answers (every insert or removal), so a caller may
        # keep a match while the count stays the same.
        self.version = 0

    def __len__(self) -> int:
        return len(self._owners)

    def match(self, hashes: Sequence[Hashable]) -> dict[str, int]:
        """Instance id -> number of leading chunks it has seen."""
        matched: dict[str, int] = {}
        for depth, h in enumerate(hashes):
            owners = self._owners.get(h)
            if not owners:
                break
            advanced = False
            for inst in owners:
                if matched.get(inst, 0) == depth:
                    matched[inst] = depth + 1
                    advanced = True
            if not advanced:
                break
        return matched

    def insert(
        self,
        hashes: Sequence[Hashable],
        instance_id: str,
        *,
        capacity: float | None = None,
        tokens_per_chunk: float = 0.0,
    ) -> None:
        """`instance_id` now holds these chunks. With `capacity` (tokens), its least recently
        used chunks beyond it are forgotten, as the engine's LRU would evict them."""
        self.version += 1
        owners_map = self._owners
        for h in hashes:
            owners = owners_map.get(h)
            if owners is None:
                owners_map[h] = {instance_id}
            else:
                owners.add(instance_id)
                owners_map.move_to_end(h)
        while len(owners_map) > self.max_entries:
            oldest, gone = owners_map.popitem(last=False)
            for inst in gone:
                self._drop_held(inst, oldest)
        if capacity is not None:
            self._hold(hashes, instance_id, capacity, tokens_per_chunk)

    def _hold(
        self, hashes: Sequence[Hashable], instance_id: str, capacity: float, weight: float
    ) -> None:
        held = self._held.setdefault(instance_id, OrderedDict())
        total = self._held_tokens.get(instance_id, 0.0)
        for h in hashes:
            old = held.pop(h, None)
            if old is not None:
                total -= old
            held[h] = weight
            total += weight
        while total > capacity and held:
            h, w = held.popitem(last=False)
            total -= w
            owners = self._owners.get(h)
            if owners is not None:
                owners.discard(instance_id)
                if not owners:
                    del self._owners[h]
        self._held_tokens[instance_id] = total

    def _drop_held(self, instance_id: str, h: Hashable) -> None:
        held = self._held.get(instance_id)
        if held is not None:
            w = held.pop(h, None)
            if w is not None:
                self._held_tokens[instance_id] -= w

    def remove_instance(self, instance_id: str) -> None:
        self.version += 1
        self._held.pop(instance_id, None)
        self._held_tokens.pop(instance_id, None)
        for h in [h for h, o in self._owners.items() if instance_id in o]:
            owners = self._owners[h]
            owners.discard(instance_id)
            if not owners:
                del self._owners[h]
