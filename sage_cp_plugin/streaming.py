"""Relaying a streaming request's chunks to its caller, as they arrive from the instance."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from sage_cp_plugin.errors import RequestTimeoutError, UpstreamError
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.types import RequestResult, RequestStatus


async def relay_chunks(
    item: QueuedRequest, cancel: Callable[[str, str], object]
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield the chunks of an admitted streaming request, then raise its error if it failed.

    The attempt puts each chunk on `item.chunks` and a None when the request ends. Leaving
    the loop early cancels the request (`cancel(request_id, reason)`).
    """
    assert item.chunks is not None and item.future is not None
    try:
        while True:
            chunk = await item.chunks.get()
            if chunk is None:
                break
            yield chunk
        result: RequestResult = await item.future
        if result.error_type == "timeout":
            raise RequestTimeoutError(result.error or "request timed out")
        if result.state != RequestStatus.COMPLETED:
            raise UpstreamError(result.error or "request failed")
    finally:
        if not item.future.done():
            cancel(item.request_id, "the caller stopped reading the stream")
