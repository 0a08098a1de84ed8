"""A faster in-process transport for replays: the executor's request goes straight into the
simulator's handler, without the ASGI exchange, Starlette's middleware and routing, or httpx's
request and response objects.

What stays the same as `StreamingASGITransport` (and as a real socket): the executor's
attempt (body encoding, status and error handling, the stream parser, response parsing,
timestamps), the simulator's request handlers (`SimInstance.completion` /
`chat_completion`, what its routes run once they have the body and headers: fault
injection, validation, the engine, the response body), and the
connection model (`kill` refuses new requests and cuts open ones with the same httpx
errors). What is skipped is only framing:
- the executor hands a completion's encoded body to `post_in_process` (the executor's
  `InProcessUpstream`) and reads the answer through the few names it uses of a response
  (status, headers, body bytes or chunks), so no `httpx.Request`/`httpx.Response`, header
  merging or URL handling is built per request;
- a non-streaming completion is answered by calling the handler in the caller's task,
  with the body and headers as they are (no Starlette request around them);
- a streaming one still runs through the ASGI exchange (chunk timing is the point there:
  every chunk reaches the executor at the virtual instant the engine sent it), without
  Starlette's stack;
- every other path (health, metrics, tokenize, embeddings, admin) goes through the full app
  unchanged, and so does a plain `httpx` request through `handle_async_request`.

`tests/test_virtual_direct.py` pins that a replay through this transport makes the same
decisions with the same timings as through `StreamingASGITransport`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sage_cp_plugin.sim.app import SimInstance
from sage_cp_plugin.sim.protocol import SimHTTPError, error_response
from sage_cp_plugin.sim.streaming import SSEResponse
from sage_cp_plugin.virtual.transport import StreamingASGITransport, _StreamBody

_Raw = list[tuple[bytes, bytes]]
# `SimInstance.completion` / `chat_completion`: the handlers' work from body and headers on.
Handler = Callable[[bytes, Mapping[str, str]], Awaitable[Response]]


class _Answer:
    """An answer as the executor reads it (`upstream_answer.ClosableAnswer`): status, headers, and
    the body, whole (`body`) or streamed from an exchange (`stream`)."""

    __slots__ = ("_body", "_raw", "_stream", "status_code")

    def __init__(
        self, status: int, raw: _Raw, body: bytes = b"", stream: _StreamBody | None = None
    ) -> None:
        self.status_code = status
        self._raw = raw
        self._body = body
        self._stream = stream

    @property
    def headers(self) -> httpx.Headers:
        # Built only when read (a refusal's Retry-After): answers that succeed never are.
        return httpx.Headers(self._raw)

    @property
    def reason_phrase(self) -> str:
        return httpx.codes.get_reason_phrase(self.status_code)

    async def aread(self) -> bytes:
        if self._stream is not None:
            self._body = b"".join([c async for c in self._stream])
            self._stream = None
        return self._body

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        if self._stream is not None:
            return self._stream.__aiter__()
        return _once(self._body)

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body


class DirectSimTransport(StreamingASGITransport):
    """`StreamingASGITransport` with a direct path for completions (see the module doc)."""

    def __init__(self, app: ASGIApp, sim: SimInstance) -> None:
        super().__init__(app)
        self.sim = sim
        self._handlers = {
            "/v1/completions": sim.completion,
            "/v1/chat/completions": sim.chat_completion,
        }
        self._kills = 0  # bumped by `kill`: a direct call that spans a kill fails like a cut

    def kill(self) -> None:
        self._kills += 1
        super().kill()

    async def post_in_process(
        self, url: httpx.URL, content: bytes, headers: Mapping[str, str]
    ) -> _Answer | httpx.Response:
        """The executor's direct call (`upstream_answer.InProcessUpstream`)."""
        handler = self._handlers.get(url.path)
        if handler is None:
            request = httpx.Request("POST", url, content=content, headers=headers)
            return await super().handle_async_request(request)
        return await self._answer(handler, content, headers)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        handler = self._handlers.get(request.url.path) if request.method == "POST" else None
        if handler is None:
            return await super().handle_async_request(request)
        answer = await self._answer(handler, await request.aread(), request.headers)
        stream = answer._stream if answer._stream is not None else httpx.ByteStream(answer._body)
        # The body as a stream, as a socket or the ASGI exchange hands it over: the client
        # reads it, and Starlette's headers already carry its length and type.
        return httpx.Response(
            answer.status_code, headers=answer._raw, stream=stream, request=request
        )

    async def _answer(self, handler: Handler, body: bytes, headers: Mapping[str, str]) -> _Answer:
        if not self.alive:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        kills = self._kills
        # The ASGI path starts the app as a task, so the handler runs one loop iteration
        # later; yield once here too, so requests reach the engine in the same order relative
        # to its steps (same-instant events) and timings stay identical.
        await asyncio.sleep(0)
        try:
            resp = await handler(body, headers)
        except SimHTTPError as exc:
            resp = error_response(exc.status, exc.message, exc.param)
        except Exception:
            # As the full app (and uvicorn) would answer a handler's crash.
            resp = None
        if self._kills != kills:
            raise httpx.RemoteProtocolError("server disconnected without sending a response")
        if resp is None:
            return _Answer(
                500,
                [(b"content-type", b"text/plain; charset=utf-8")],
                b"Internal Server Error",
            )
        if isinstance(resp, SSEResponse):
            return await self._stream(resp, body)
        return _Answer(resp.status_code, resp.raw_headers, bytes(resp.body))

    async def _stream(self, resp: SSEResponse, body: bytes) -> _Answer:
        """Run the handler's SSE response through the exchange, as the full app would."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await resp(scope, receive, send)

        scope: dict[str, Any] = {"type": "http", "method": "POST", "headers": []}
        start, stream = await self._open(app, scope, body)
        return _Answer(start["status"], list(start.get("headers", [])), stream=stream)
