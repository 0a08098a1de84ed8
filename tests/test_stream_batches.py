"""Streamed chunks that arrived together reach the client in one write (issue 16, less CPU
per request): the relay takes everything queued when it reads, never waits for more, and
keeps the order, the usage filter and the end of the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from entrypoints.gateway.disconnect import DisconnectWatcher
from entrypoints.gateway.sse import SSERelay, event
from sage_cp_plugin.relayed_chunk import RelayedChunk
from sage_cp_plugin.streaming import next_batch


def chunk(text: str) -> RelayedChunk:
    return RelayedChunk({"choices": [{"index": 0, "text": text}]}, f'{{"t":"{text}"}}'.encode())


async def test_next_batch_takes_what_is_queued_and_reports_the_end() -> None:
    q: asyncio.Queue[str | None] = asyncio.Queue()
    for item in ("a", "b"):
        q.put_nowait(item)
    assert await next_batch(q) == (["a", "b"], False)
    waiting = asyncio.ensure_future(next_batch(q))
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing queued: it waits for the first item, not longer
    q.put_nowait("c")
    assert await waiting == (["c"], False)
    for item in ("d", None):
        q.put_nowait(item)
    assert await next_batch(q) == (["d"], True)
    q.put_nowait(None)
    assert await next_batch(q) == ([], True)


async def test_relay_writes_each_batch_at_once_in_order_without_usage_only_chunks() -> None:
    usage_only = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 3}}
    later: list[list[dict[str, Any]]] = [[chunk("b"), chunk("c"), usage_only]]

    async def batches() -> AsyncGenerator[list[dict[str, Any]], None]:
        for b in later:
            yield b

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        return {}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    ended: list[bool] = []

    async def on_end(ok: bool) -> None:
        ended.append(ok)

    relay = SSERelay(
        [chunk("a")],
        batches(),
        DisconnectWatcher(receive),
        include_usage=False,
        headers={},
        on_end=on_end,
    )
    await relay({"type": "http"}, receive, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert bodies == [
        event(chunk("a")),
        event(chunk("b")) + event(chunk("c")),  # one write for the chunks that came together
        b"data: [DONE]\n\n",
    ]
    assert ended == [True]
