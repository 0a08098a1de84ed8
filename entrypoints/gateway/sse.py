"""Relaying a streamed answer to the client as server-sent events, as the chunks arrive.

The first chunk is awaited before any byte is sent, so a request that fails before it starts
(no instance, queue full, upstream error) still gets a proper HTTP status. After that the
status is 200: a later failure is reported in-stream as an OpenAI error event, as vLLM does,
followed by `data: [DONE]`. A client that disconnects cancels the relay, which closes the
manager's stream and so cancels the upstream request. The chunks that arrived together
(one network read from the instance, or while the relay waited for the client's socket) go
out in one write: one send and one wake-up of the relay per batch, not per chunk, and never
a wait for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sage_cp_plugin.relayed_chunk import RelayedChunk
from sage_cp_plugin.types import RequestResult

from .disconnect import ClientDisconnected, DisconnectWatcher
from .errors import exception_to_error

logger = logging.getLogger(__name__)
DONE = b"data: [DONE]\n\n"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def event(payload: dict[str, Any]) -> bytes:
    if type(payload) is RelayedChunk:  # an instance's chunk, unchanged: its own bytes
        return b"data: " + payload.raw + b"\n\n"
    return b"data: " + _dumps(payload).encode() + b"\n\n"


def _usage_only(chunk: dict[str, Any]) -> bool:
    return not chunk.get("choices") and bool(chunk.get("usage"))


class SSERelay(Response):
    """A response whose body is the rest of `batches` (the first batch already fetched)."""

    def __init__(
        self,
        first: list[dict[str, Any]],
        chunks: AsyncGenerator[list[dict[str, Any]], None],
        watcher: DisconnectWatcher,
        *,
        include_usage: bool,
        headers: dict[str, str],
        on_end: Callable[[bool], Awaitable[None]],
    ) -> None:
        super().__init__(status_code=200, headers=headers, media_type="text/event-stream")
        # Response() adds `content-length: 0` for an empty body; a stream has no length.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.first = first
        self.chunks = chunks
        self.watcher = watcher
        self.include_usage = include_usage
        self.on_end = on_end  # called with True when the stream completed normally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ok = False
        relay = asyncio.ensure_future(self._relay(send))
        try:
            ok = await self.watcher.race(relay)
        except ClientDisconnected:
            ok = False  # the relay was cancelled, and with it the upstream request
        except Exception:
            ok = False
            logger.exception("stream relay failed")
        finally:
            self.watcher.close()
            if not relay.done():
                relay.cancel()
            with contextlib.suppress(BaseException):
                await relay
            # Closing the generator runs manager.stream's `finally`, which cancels upstream.
            with contextlib.suppress(Exception):
                await self.chunks.aclose()
            await self.on_end(ok)

    async def _relay(self, send: Send) -> bool:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        keep_usage = self.include_usage
        batch = self.first
        ok = True
        try:
            while True:
                body = b"".join(
                    [event(chunk) for chunk in batch if keep_usage or not _usage_only(chunk)]
                )
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                batch = await anext(self.chunks)
        except StopAsyncIteration:
            pass
        except Exception as exc:  # failure after the first chunk: report it in-stream
            ok = False
            err = exception_to_error(exc)
            await send(
                {
                    "type": "http.response.body",
                    "body": event({"error": {"message": err.message, "type": "upstream_error",
                                             "param": None, "code": str(err.status)}}),
                    "more_body": True,
                }
            )  # fmt: skip
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
        return ok


def replay_as_sse(
    result: RequestResult, *, include_usage: bool, headers: dict[str, str]
) -> Response:
    """A finished answer as a short SSE stream: one chunk with the whole text, the usage
    chunk when asked for, then [DONE] (for a resent streamed request; see openai_routes)."""
    resp = result.response or {}
    chat = resp.get("object") == "chat.completion"
    choice: dict[str, Any] = {"index": 0, "finish_reason": None}
    first = (resp.get("choices") or [{}])[0]
    choice["finish_reason"] = first.get("finish_reason")
    if chat:
        choice["delta"] = {"role": "assistant", "content": result.output or ""}
    else:
        choice["text"] = result.output or ""
    base = {
        "id": resp.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": resp.get("created", 0),
        "model": resp.get("model", ""),
    }
    parts = [event({**base, "choices": [choice]})]
    if include_usage and resp.get("usage"):
        parts.append(event({**base, "choices": [], "usage": resp["usage"]}))
    parts.append(DONE)
    return Response(b"".join(parts), headers=headers, media_type="text/event-stream")
