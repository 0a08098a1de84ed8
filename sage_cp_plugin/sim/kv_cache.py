"""Paged KV cache with prefix caching, modelled on vLLM's block pool.

Blocks of ``block_size`` tokens are reference counted. A *full* block gets a chained hash
``hash((parent_hash, the block's words joined by single spaces))`` so equal token prefixes map
to equal hash chains, and a new request reuses the longest chain already in the cache. Blocks
whose reference count drops to zero keep their hash (they stay reusable) but become evictable,
least recently freed first. A request frees its blocks tail-first, so the shared head of a
prefix is evicted last -- the same order vLLM uses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import islice

import numpy as np

from sage_cp_plugin.kvevents.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from sage_cp_plugin.sim.tokens import token_id


def chain_hashes(
    tokens: Sequence[str], block_size: int, start: int = 0, parent: int = 0
) -> list[int]:
    """Hashes of the full blocks of ``tokens`` from block index ``start``, chained on ``parent``.

    A block's hash is ``hash((parent_hash, its words joined by single spaces))``: equal
    token prefixes give equal chains, and a plain prompt's blocks are slices of its text
    (`text_chain_hashes`, the same values). Uses the built-in ``hash`` (salted per process):
    hashes never leave the process.
    """
    out: list[int] = []
    h = parent
    join = " ".join
    it = iter(tokens) if start == 0 else islice(tokens, start * block_size, None)
    for block in zip(*[it] * block_size, strict=False):  # a partial last block is dropped
        h = hash((h, join(block)))
        out.append(h)
    return out


def text_chain_hashes(
    text: str, seps: np.ndarray, block_size: int, lo: int, hi: int, parent: int = 0
) -> list[int]:
    """`chain_hashes` of blocks ``lo..hi-1`` of the plain text ``text`` (`tokens.separators`
    gave ``seps``), from its slices: no string per word."""
    # Block k ends where its last word does: at a separator, or at the end of the text.
    ends = seps[block_size - 1 :: block_size].tolist()
    if (seps.size + 1) % block_size == 0:
        ends.append(len(text))
    out: list[int] = []
    h = parent
    a = 0 if lo == 0 else ends[lo - 1] + 1
    for b in ends[lo:hi]:
        h = hash((h, text[a:b]))
        out.append(h)
        a = b + 1
    return out


class KVCache:
    """``num_blocks`` blocks; allocation never blocks -- a caller that gets ``None`` preempts."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        # Evictable blocks (ref == 0), least recently freed first. Dict keys keep O(1) removal.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        # vLLM's KV events, when published: a block is "stored" when its hash becomes the
        # one prefix lookups find, "removed" when that stops (eviction), as in vLLM's pool.
        self.on_event: Callable[[KVEvent], None] | None = None

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by a request (vLLM's ``kv_cache_usage_perc``)."""
        return self.num_used / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, hashes: Sequence[int]) -> list[int]:
        """Blocks holding the longest cached prefix of the hash chain ``hashes``."""
        if not self.enable_prefix_caching:
            return []
        found: list[int] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def evictable_among(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` sit in the free list (touching them shrinks it)."""
        return sum(1 for b in blocks if self._ref[b] == 0)

    def touch(self, blocks: Sequence[int]) -> None:
        """Take a reference on cached blocks (prefix hit)."""
        for b in blocks:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1

    def allocate(self, n: int) -> list[int] | None:
        """``n`` fresh blocks, evicting least recently freed cached ones; ``None`` if short."""
        if n > len(self._free):
            return None
        out: list[int] = []
        # Locals: this loop runs once per KV block of every admitted request.
        pop, hash_of, by_hash, ref = self._free.popitem, self._hash_of, self._by_hash, self._ref
        for _ in range(n):
            b, _unused = pop(last=False)
            old = hash_of[b]
            if old is not None:
                hash_of[b] = None
                if by_hash.get(old) == b:
                    del by_hash[old]
                    if self.on_event is not None:
                        self.on_event(BlockRemoved([old]))
            ref[b] = 1
            out.append(b)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference from each block, tail first (see module docstring)."""
        ref, hash_of, free = self._ref, self._hash_of, self._free  # locals: once per block
        for b in reversed(blocks):
            r = ref[b] = ref[b] - 1
            if r == 0:
                free[b] = None
                if hash_of[b] is None:
                    # Nothing reusable inside: evict it before any cached block.
                    free.move_to_end(b, last=False)

    def register(
        self,
        block: int,
        block_hash: int,
        parent_hash: int | None = None,
        tokens: Sequence[str] = (),
    ) -> None:
        """Record that ``block`` is full and holds the chain ending in ``block_hash``.

        ``parent_hash`` (None for a first block) and the block's ``tokens`` only feed events.
        """
        if not self.enable_prefix_caching or self._hash_of[block] is not None:
            return
        self._hash_of[block] = block_hash
        # A duplicate computed concurrently keeps the first copy as the canonical one.
        if self._by_hash.setdefault(block_hash, block) == block and self.on_event is not None:
            self.on_event(
                BlockStored(
                    [block_hash], parent_hash, [token_id(t) for t in tokens], self.block_size
                )
            )

    def register_run(
        self, blocks: Sequence[int], hashes: Sequence[int], start: int, end: int
    ) -> None:
        """`register(blocks[i], hashes[i])` for i in ``start..end``, without events (the
        caller publishes none): one call per step instead of one per block."""
        if not self.enable_prefix_caching:
            return
        hash_of, by_hash = self._hash_of, self._by_hash
        for i in range(start, end):
            block = blocks[i]
            if hash_of[block] is None:
                hash_of[block] = h = hashes[i]
                by_hash.setdefault(h, block)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash, as vLLM's ``/reset_prefix_cache``; refused (False) while
        a request holds blocks, as vLLM refuses it."""
        if self.num_used:
            return False
        self._hash_of = [None] * self.num_blocks
        self._by_hash.clear()
        if self.on_event is not None:
            self.on_event(AllBlocksCleared())
        return True
