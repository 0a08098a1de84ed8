"""Relaying a streaming request's chunks to its caller, as they arrive from the instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from sage_cp_plugin.errors import RequestTimeoutError, UpstreamError
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.types import RequestResult, RequestStatus

T = TypeVar("T")


async def relay_chunks(
    item: QueuedRequest, cancel: Callable[[str, str], object]
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield the chunks of an admitted streaming request, then raise its error if it failed.

    The attempt puts each chunk on `item.chunks` and a None when the request ends. Leaving
    the loop early cancels the request (`cancel(request_id, reason)`): `relay_chunk_batches`
    one chunk at a time.
    """
    async with aclosing(relay_chunk_batches(item, cancel)) as batches:
        async for batch in batches:
            for chunk in batch:
                yield chunk


async def relay_chunk_batches(
    item: QueuedRequest, cancel: Callable[[str, str], object]
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """`relay_chunks`, yielding every chunk that has arrived by the time the caller reads
    (at least one): a relay writes them to its client in one write instead of one per chunk
    (a socket write and a wake-up of the relay each). Nothing waits for more to arrive."""
    assert item.chunks is not None and item.future is not None
    try:
        ended = False
        while not ended:
            batch, ended = await next_batch(item.chunks)
            if batch:
                yield batch
        await _outcome(item)
    finally:
        if not item.future.done():
            cancel(item.request_id, "the caller stopped reading the stream")


async def next_batch(queue: asyncio.Queue[T | None]) -> tuple[list[T], bool]:
    """Wait for an item, then take every item already queued, without waiting: (the items,
    whether the end mark None was taken)."""
    item = await queue.get()
    batch = []
    while item is not None:
        batch.append(item)
        if queue.empty():
            return batch, False
        item = queue.get_nowait()
    return batch, True


async def _outcome(item: QueuedRequest) -> None:
    """Raise the error of a streamed request whose chunks have all been relayed, if it
    failed."""
    assert item.future is not None
    result: RequestResult = await item.future
    if result.error_type == "timeout":
        raise RequestTimeoutError(result.error or "request timed out")
    if result.state != RequestStatus.COMPLETED:
        raise UpstreamError(result.error or "request failed")
