"""One index of which instance holds which KV blocks, kept from the engines' own events.

Blocks are keyed by **our** content hash: a chain over the block's token ids, its LoRA and any
extra hash inputs, seeded by the parent block's content hash, so that a router computes the
same keys from a request's token ids (`prompt_block_hashes`) without knowing how an engine
hashes (vLLM's sha256 depends on its seed and version). Engine block hashes are kept only per
source, to map a later `BlockRemoved` and the next `BlockStored`'s parent back to our keys.

A source is one event publisher: an instance, or one data-parallel rank of it. An engine may
hold the same content twice (two requests computed it concurrently); it then stores and later
removes it twice, so holdings are counted, not flagged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sage_cp_plugin.kvevents.events import (
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EngineBlockHash,
    KVEvent,
)

ROOT_HASH = 0  # parent of a prompt's first block

SourceKey = tuple[str, int]  # (instance id, data-parallel rank)


def prompt_block_hashes(
    token_ids: Sequence[int], block_size: int, lora_name: str | None = None
) -> list[int]:
    """Content hashes of the full blocks of a prompt, as the index keys them.

    Python's ``hash`` of a tuple of ints is deterministic and fast; the keys never leave the
    process, so a cryptographic hash would only cost time in the admission path.
    """
    out: list[int] = []
    h = ROOT_HASH
    for i in range(len(token_ids) // block_size):
        h = hash((h, lora_name, tuple(token_ids[i * block_size : (i + 1) * block_size])))
        out.append(h)
    return out


def _is_device_medium(medium: str | None) -> bool:
    # Only blocks in the engine's own cache turn into prefix-cache hits; offloaded tiers
    # (CPU, disk via a connector) are reported with another medium and are not counted.
    return medium is None or medium.upper() == MEDIUM_GPU


@dataclass(slots=True)
class SourceBlocks:
    """What one publisher holds: engine hash -> [content hash, copies]."""

    instance_id: str
    block_size: int | None = None
    by_engine: dict[EngineBlockHash, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class IndexStats:
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    # Blocks whose parent the index did not know (events missed before it subscribed).
    unresolved: int = 0
    # Removals of blocks the index never saw stored (same cause); harmless.
    unknown_removed: int = 0
    other_medium: int = 0


class BlockIndex:
    def __init__(self) -> None:
        # content hash -> instance id -> copies held (over all its sources)
        self._holders: dict[int, dict[str, int]] = {}
        self._sources: dict[SourceKey, SourceBlocks] = {}
        # Per instance, so a routing decision looks it up in O(1) per candidate.
        self._block_size: dict[str, int] = {}
        self.stats = IndexStats()

    # -- reading ---------------------------------------------------------------------------
    def block_size(self, instance_id: str) -> int | None:
        """Block size the instance's events announced (None before its first store)."""
        return self._block_size.get(instance_id)

    def blocks_of(self, instance_id: str) -> int:
        return sum(
            sum(e[1] for e in src.by_engine.values())
            for key, src in self._sources.items()
            if key[0] == instance_id
        )

    def holds(self, content_hash: int, instance_id: str) -> bool:
        holders = self._holders.get(content_hash)
        return bool(holders and holders.get(instance_id))

    def match(self, hashes: Sequence[int], instance_ids: Iterable[str]) -> dict[str, int]:
        """Instance id -> how many leading blocks of ``hashes`` it holds (only ``instance_ids``).

        Stops at the first block an instance lacks, as the engine's own lookup does: a cached
        child of an evicted parent is unreachable.
        """
        alive = set(instance_ids)
        depth_of = dict.fromkeys(alive, 0)
        for depth, h in enumerate(hashes):
            holders = self._holders.get(h)
            if not holders:
                break
            alive = {i for i in alive if holders.get(i)}
            if not alive:
                break
            for i in alive:
                depth_of[i] = depth + 1
        return depth_of

    # -- writing ---------------------------------------------------------------------------
    def apply(self, source: SourceKey, event: KVEvent) -> None:
        if isinstance(event, BlockStored):
            self._stored(source, event)
        elif isinstance(event, BlockRemoved):
            self._removed(source, event)
        elif isinstance(event, AllBlocksCleared):
            self.stats.cleared += 1
            self.clear_source(source)

    def _source(self, source: SourceKey) -> SourceBlocks:
        src = self._sources.get(source)
        if src is None:
            src = self._sources[source] = SourceBlocks(source[0])
        return src

    def _stored(self, source: SourceKey, ev: BlockStored) -> None:
        if not _is_device_medium(ev.medium):
            self.stats.other_medium += len(ev.block_hashes)
            return
        src = self._source(source)
        src.block_size = ev.block_size
        self._block_size[src.instance_id] = ev.block_size
        if ev.parent_block_hash is None:
            parent = ROOT_HASH
        else:
            known = src.by_engine.get(ev.parent_block_hash)
            if known is None:
                self.stats.unresolved += len(ev.block_hashes)
                return
            parent = known[0]
        bs = ev.block_size
        tokens = ev.token_ids
        extra = ev.extra_keys
        inst = src.instance_id
        for i, engine_hash in enumerate(ev.block_hashes):
            block = tuple(tokens[i * bs : (i + 1) * bs])
            key = extra[i] if extra is not None and i < len(extra) else None
            # Blocks with extra inputs (images, cache salt) never match a plain-text prompt.
            parent = (
                hash((parent, ev.lora_name, block))
                if key is None
                else hash((parent, ev.lora_name, block, repr(key)))
            )
            entry = src.by_engine.get(engine_hash)
            if entry is None:
                src.by_engine[engine_hash] = [parent, 1]
            elif entry[0] == parent:
                entry[1] += 1
            else:
                # The engine reused a hash for other content (cannot happen with vLLM's
                # sha256; guards int-hash builds): forget the old content first.
                self._drop(inst, entry[0], entry[1])
                src.by_engine[engine_hash] = [parent, 1]
            holders = self._holders.get(parent)
            if holders is None:
                self._holders[parent] = {inst: 1}
            else:
                holders[inst] = holders.get(inst, 0) + 1
            self.stats.stored += 1

    def _removed(self, source: SourceKey, ev: BlockRemoved) -> None:
        if not _is_device_medium(ev.medium):
            return
        src = self._sources.get(source)
        for engine_hash in ev.block_hashes:
            entry = src.by_engine.get(engine_hash) if src is not None else None
            if entry is None or src is None:
                self.stats.unknown_removed += 1
                continue
            entry[1] -= 1
            if entry[1] <= 0:
                del src.by_engine[engine_hash]
            self._drop(src.instance_id, entry[0], 1)
            self.stats.removed += 1

    def _drop(self, instance_id: str, content: int, copies: int) -> None:
        holders = self._holders.get(content)
        if holders is None:
            return
        left = holders.get(instance_id, 0) - copies
        if left > 0:
            holders[instance_id] = left
            return
        holders.pop(instance_id, None)
        if not holders:
            del self._holders[content]

    def clear_source(self, source: SourceKey) -> int:
        """Forget everything one publisher holds; returns how many blocks that was."""
        src = self._sources.get(source)
        if src is None:
            return 0
        n = 0
        for content, copies in src.by_engine.values():
            self._drop(src.instance_id, content, copies)
            n += copies
        src.by_engine.clear()
        return n

    def remove_instance(self, instance_id: str) -> None:
        for key in [k for k in self._sources if k[0] == instance_id]:
            self.clear_source(key)
            del self._sources[key]
        self._block_size.pop(instance_id, None)
