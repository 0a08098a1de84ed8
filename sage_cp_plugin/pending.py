"""The pending queue: one heap per pool (model + kind), ordered by the policy's key.

A router may split a pool into lanes (a split-fleet experiment: one lane per arm, each with
its own instances and possibly its own policy): every lane is a heap of its own, so a lane
whose instances are busy never holds another lane's requests back.

Keys are static per request (policies express time-dependence through the key, e.g.
aging as ``arrival + priority * aging_s``), so a heap gives O(log n) push/pop and the
cost of a decision does not grow with the queue. Cancelled entries are deleted lazily.
When the policy changes its ordering (adaptive switch, run-time policy change) the heaps
are rebuilt once, O(n), instead of on every dispatch.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sage_cp_plugin.types import ExecutionInstanceType, RequestKind, RequestMetadata


@dataclass(slots=True, eq=False)
class QueuedRequest:
    """A request inside the coordinator, with what decisions need precomputed."""

    request: RequestMetadata
    arrival: float  # event-loop clock, seconds
    seq: int
    input_tokens: int
    output_tokens: int
    deadline: float | None  # absolute, loop clock; from slo_deadline_ms
    predicted_s: float = 0.0  # best-case service time when enqueued
    future: asyncio.Future[Any] | None = None
    key: tuple[float, ...] = ()
    cancelled: bool = False
    attempts: int = 0
    excluded: set[str] = field(default_factory=set)
    phase: ExecutionInstanceType | None = None
    enqueued_at: float = 0.0
    not_before: float = 0.0  # retry backoff: do not dispatch before this time
    last_error: str | None = None
    cancel_reason: str | None = None
    no_split: bool = False  # disaggregated prefill failed once: run whole from now on
    urgent: bool = False  # may use the manager's urgent headroom
    # Its objective can no longer be met: the policy orders it as work without one
    # (`SchedulingPolicy.demote`), so it stops delaying requests that can still make theirs.
    demoted: bool = False
    failed_on: str | None = None  # instance whose failure caused the pending retry
    first_token_seen: bool = False  # the running attempt has produced its first token
    cost: float | None = None  # what its attempts cost so far (None: nothing priced)
    # Streaming callers receive chunks through this queue (None = not streaming).
    chunks: asyncio.Queue[Any] | None = None
    # The prompt's token ids as the engines tokenize it (None = unknown) and its block
    # content hashes per block size, computed at admission for the KV-event index.
    prompt_token_ids: list[int] | None = None
    block_hashes: dict[int, list[int]] | None = None
    # The prompt's chained character-chunk keys for the approximate prefix index:
    # ((chunk size, portable keys), keys, tokens per chunk), computed at admission
    # (`cache_view.prepare`).
    prefix_chunks: tuple[tuple[int, bool], list[Any], float] | None = None
    # The admitting replica's (index, count) among its peers (`routing.rotation`).
    replica: tuple[int, int] = (0, 1)
    lane: str | None = None  # the router's lane (its own heap); None: the shared one
    # Its spans while traced (tracing.spans.RequestTrace); None when tracing is off.
    trace: Any = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def ttft_left_s(self, now: float) -> float | None:
        """What is left at `now` of its TTFT objective, counted from arrival (None without
        one; negative once spent)."""
        slo = self.request.ttft_slo_ms
        return None if slo is None else slo / 1000.0 - (now - self.arrival)

    @property
    def pool(self) -> tuple[str | None, bool]:
        """Which instances may serve it: (model, embedding?)."""
        return (self.request.model_name, self.request.kind == RequestKind.EMBEDDING)

    @property
    def queue_key(self) -> tuple[str | None, bool, bool, str | None]:
        """Its heap: urgent requests queue apart, so a full pool's head cannot block them
        from the urgent headroom; so does each lane."""
        return (
            self.request.model_name,
            self.request.kind == RequestKind.EMBEDDING,
            self.urgent,
            self.lane,
        )


PoolKey = tuple[str | None, bool, bool, str | None]


class PendingQueue:
    """Bounded multi-pool priority queue of `QueuedRequest`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._heaps: dict[PoolKey, list[tuple[tuple[float, ...], int, QueuedRequest]]] = {}
        self._by_id: dict[str, QueuedRequest] = {}
        self._counter = itertools.count()
        self._lane_depth: dict[str, int] = {}  # queued requests per named lane

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._by_id

    def full(self) -> bool:
        return len(self._by_id) >= self.capacity

    def lane_depth(self, lane: str) -> int:
        return self._lane_depth.get(lane, 0)

    def _left(self, item: QueuedRequest) -> None:
        if item.lane is not None:
            self._lane_depth[item.lane] -= 1

    def push(self, item: QueuedRequest) -> None:
        self._by_id[item.request_id] = item
        if item.lane is not None:
            self._lane_depth[item.lane] = self._lane_depth.get(item.lane, 0) + 1
        heap = self._heaps.setdefault(item.queue_key, [])
        heapq.heappush(heap, (item.key, next(self._counter), item))

    def pools(self) -> list[PoolKey]:
        """Non-empty heaps, urgent ones first."""
        return sorted((k for k, h in self._heaps.items() if h), key=lambda k: not k[2])

    def peek(self, pool: PoolKey) -> QueuedRequest | None:
        heap = self._heaps.get(pool)
        while heap:
            item = heap[0][2]
            if item.cancelled or self._by_id.get(item.request_id) is not item:
                heapq.heappop(heap)
                continue
            return item
        return None

    def pop(self, pool: PoolKey) -> QueuedRequest | None:
        item = self.peek(pool)
        if item is not None:
            heapq.heappop(self._heaps[pool])
            del self._by_id[item.request_id]
            self._left(item)
        return item

    def remove(self, request_id: str) -> QueuedRequest | None:
        """Remove by id (cancellation); the heap entry is dropped lazily."""
        item = self._by_id.pop(request_id, None)
        if item is not None:
            item.cancelled = True
            self._left(item)
        return item

    def rekey(self, key: Callable[[QueuedRequest], tuple[float, ...]]) -> None:
        """Rebuild every heap with a new ordering (policy switch)."""
        for pool, heap in self._heaps.items():
            items = [
                e[2]
                for e in heap
                if not e[2].cancelled and self._by_id.get(e[2].request_id) is e[2]
            ]
            rebuilt = []
            for it in items:
                it.key = key(it)
                rebuilt.append((it.key, next(self._counter), it))
            heapq.heapify(rebuilt)
            self._heaps[pool] = rebuilt

    def items(self) -> Iterator[QueuedRequest]:
        return iter(list(self._by_id.values()))

    def depth_by_pool(self) -> dict[PoolKey, int]:
        out: dict[PoolKey, int] = {}
        for it in self._by_id.values():
            out[it.queue_key] = out.get(it.queue_key, 0) + 1
        return out
