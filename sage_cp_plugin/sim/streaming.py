"""Server-sent events: vLLM's chunk format, client-disconnect detection and stream faults.

Chunks are formatted from per-request string templates rather than ``json.dumps`` of a fresh
dict per token: in zero-latency mode the simulator's own cost is what benchmarks measure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sage_cp_plugin.sim.config import FaultConfig
from sage_cp_plugin.sim.responses import usage
from sage_cp_plugin.sim.sequence import SimSequence

DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class SimulatedDisconnect(Exception):
    """Raised inside a streaming response to make the server drop the connection."""


def _event(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


async def completion_chunks(
    seq: SimSequence, rid: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    head = (
        f'{{"id":"{rid}","object":"text_completion","created":{created},'
        f'"model":{json.dumps(model)},"choices":[{{"index":0,"text":'
    )
    n = 0
    async for word in seq.stream():
        n += 1
        finish = '"length"' if n == seq.max_tokens else "null"
        text = json.dumps(word if n == 1 else " " + word)
        yield _event(
            f'{head}{text},"logprobs":null,"finish_reason":{finish},"stop_reason":null}}]}}'
        )
    if include_usage:
        yield _event(
            json.dumps(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage(seq.prompt_len, seq.num_output),
                }
            )
        )
    yield DONE


async def chat_chunks(
    seq: SimSequence, rid: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    head = (
        f'{{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
        f'"model":{json.dumps(model)},"choices":[{{"index":0,"delta":'
    )
    tail = ',"logprobs":null,"finish_reason":null}]}'
    yield _event(f'{head}{{"role":"assistant","content":""}}{tail}')
    n = 0
    async for word in seq.stream():
        n += 1
        text = json.dumps(word if n == 1 else " " + word)
        if n == seq.max_tokens:
            end = ',"logprobs":null,"finish_reason":"length","stop_reason":null}]}'
            yield _event(f'{head}{{"content":{text}}}{end}')
        else:
            yield _event(f'{head}{{"content":{text}}}{tail}')
    if include_usage:
        yield _event(
            json.dumps(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage(seq.prompt_len, seq.num_output),
                }
            )
        )
    yield DONE


class SSEResponse(Response):
    """Streams ``chunks``; calls ``on_close`` once the stream ends for any reason.

    uvicorn's ``send`` silently drops data for a client that has gone, so a separate task
    watches ``receive`` for ``http.disconnect``: a client that stops reading aborts its
    sequence at once (its KV freed) instead of when its last token would have been produced.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_close: Callable[[], None],
        faults: FaultConfig,
    ) -> None:
        self.chunks = chunks
        self.on_close = on_close
        self.faults = faults
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await self._stream(send)
        finally:
            watcher.cancel()
            self.on_close()

    async def _stream(self, send: Send) -> None:
        f = self.faults
        sent = 0
        async for chunk in self.chunks:
            if f.disconnect_after_chunks is not None and sent >= f.disconnect_after_chunks:
                raise SimulatedDisconnect(f"fault: connection dropped after {sent} SSE chunks")
            if f.malformed_json and chunk != DONE:
                chunk = b'data: {"id": "broken", "choices": [{"index": 0, "text": \n\n'
            elif f.truncated_sse and sent >= 1:
                # Half a JSON object, then the stream ends without [DONE].
                await send({"type": "http.response.body", "body": chunk[: len(chunk) // 2]})
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.on_close()
                return
