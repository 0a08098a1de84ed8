"""vLLM's KV-cache events and their msgpack wire format.

vLLM (`vllm/distributed/kv_events.py`) publishes `KVEventBatch(ts, events, data_parallel_rank)`
encoded by msgspec as msgpack. In vLLM 0.32 the batch is `array_like` -- the array
`[ts, [event, ...], dp_rank]` -- and each event a tagged map:
`{"type": "BlockStored", "block_hashes": [...], "parent_block_hash": ..., "token_ids": [...],
"block_size": 16, "lora_id": null, "medium": "GPU", "lora_name": null, ...}`,
`{"type": "BlockRemoved", "block_hashes": [...], "medium": "GPU"}` or
`{"type": "AllBlocksCleared"}` (fields equal to their default are omitted). Older releases
encoded events as tagged arrays `["BlockStored", block_hashes, parent, ...]` (what llm-d's
indexer reads); both are decoded. Fields this module does not know are ignored, so releases
that add fields keep working.

Engine block hashes are opaque: `bytes` (vLLM's sha256 digests) or `int` (with
`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`); they are only compared for equality.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

EngineBlockHash = Hashable  # bytes or int, as the engine sent it

# Medium of a block in the engine's own (GPU) cache; vLLM sends "GPU" also on CPU builds.
MEDIUM_GPU = "GPU"

# Field order of vLLM's array-like structs (after the tag).
_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
)
_REMOVED_FIELDS = ("block_hashes", "medium")


class EventDecodeError(ValueError):
    """A payload that is not a KV-event batch."""


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Full blocks entered the prefix cache; ``token_ids`` spans all of them, in order."""

    block_hashes: list[EngineBlockHash]
    parent_block_hash: EngineBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None = None
    medium: str | None = MEDIUM_GPU
    # Per-block extra hash inputs (multimodal ids, cache salt...); None entries for plain text.
    extra_keys: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks left the prefix cache (evicted)."""

    block_hashes: list[EngineBlockHash]
    medium: str | None = MEDIUM_GPU


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The engine dropped its whole prefix cache (`reset_prefix_cache`)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


def _hashable(h: Any) -> EngineBlockHash:
    # msgpack may hand back lists for tuples (never for vLLM's hashes, but be safe).
    return tuple(h) if isinstance(h, list) else h


def _fields(raw: Any, names: Sequence[str], tag: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {k: raw[k] for k in names if k in raw}
    if isinstance(raw, list | tuple):
        return dict(zip(names, raw[1:], strict=False))
    raise EventDecodeError(f"{tag} event is neither an array nor a map: {type(raw).__name__}")


def _decode_event(raw: Any) -> KVEvent | None:
    if isinstance(raw, list | tuple) and raw:
        tag = raw[0]
    elif isinstance(raw, dict):
        tag = raw.get("type")
    else:
        raise EventDecodeError(f"event is neither a tagged array nor a map: {raw!r:.80}")
    if tag == "BlockStored":
        f = _fields(raw, _STORED_FIELDS, tag)
        try:
            hashes = [_hashable(h) for h in f["block_hashes"]]
            token_ids = [int(t) for t in f["token_ids"]]
            block_size = int(f["block_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EventDecodeError(f"BlockStored event lacks a valid field: {exc}") from exc
        if block_size <= 0 or len(token_ids) != len(hashes) * block_size:
            raise EventDecodeError(
                f"BlockStored event has {len(token_ids)} token ids for {len(hashes)} blocks "
                f"of {block_size}"
            )
        parent = f.get("parent_block_hash")
        return BlockStored(
            block_hashes=hashes,
            parent_block_hash=None if parent is None else _hashable(parent),
            token_ids=token_ids,
            block_size=block_size,
            lora_name=f.get("lora_name"),
            medium=f.get("medium", MEDIUM_GPU),
            extra_keys=f.get("extra_keys"),
        )
    if tag == "BlockRemoved":
        f = _fields(raw, _REMOVED_FIELDS, tag)
        try:
            hashes = [_hashable(h) for h in f["block_hashes"]]
        except (KeyError, TypeError) as exc:
            raise EventDecodeError(f"BlockRemoved event lacks block_hashes: {exc}") from exc
        return BlockRemoved(block_hashes=hashes, medium=f.get("medium", MEDIUM_GPU))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None  # an event kind this version does not know: skip it


def decode_batch(payload: bytes) -> EventBatch:
    """One published payload -> `EventBatch`; raises `EventDecodeError` on anything else."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise EventDecodeError(f"payload is not msgpack: {exc}") from exc
    if isinstance(raw, dict):
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list | tuple) and len(raw) >= 2:
        ts, events = raw[0], raw[1]
        rank = raw[2] if len(raw) > 2 else None
    else:
        raise EventDecodeError(f"payload is not an event batch: {raw!r:.80}")
    if not isinstance(events, list) or not isinstance(ts, int | float):
        raise EventDecodeError(f"payload is not an event batch: {raw!r:.80}")
    decoded = [e for e in (_decode_event(r) for r in events) if e is not None]
    return EventBatch(float(ts), decoded, rank if isinstance(rank, int) else None)


def _encode_event(e: KVEvent) -> dict[str, Any]:
    if isinstance(e, BlockStored):
        out: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": e.block_hashes,
            "parent_block_hash": e.parent_block_hash,
            "token_ids": e.token_ids,
            "block_size": e.block_size,
            "lora_id": None,  # deprecated upstream, still a required field
            "medium": e.medium,
            "lora_name": e.lora_name,
        }
        if e.extra_keys is not None:
            out["extra_keys"] = e.extra_keys
        return out
    if isinstance(e, BlockRemoved):
        return {"type": "BlockRemoved", "block_hashes": e.block_hashes, "medium": e.medium}
    return {"type": "AllBlocksCleared"}


def encode_batch(batch: EventBatch) -> bytes:
    """`EventBatch` -> the payload vLLM 0.32 publishes (array batch, tagged-map events)."""
    raw: list[Any] = [batch.ts, [_encode_event(e) for e in batch.events]]
    if batch.data_parallel_rank is not None:
        raw.append(batch.data_parallel_rank)
    payload: bytes = msgpack.packb(raw, use_bin_type=True)
    return payload
