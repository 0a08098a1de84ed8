"""A faster in-process transport for replays: the executor's request goes straight into the
simulator's handler, without the ASGI exchange and Starlette's middleware and routing.

What stays the same as `StreamingASGITransport` (and as a real socket): the executor and its
`httpx.AsyncClient` (body encoding, status handling, JSON parsing), the simulator's request
handlers (`SimInstance.completions` / `chat_completions`: fault injection, validation, the
engine, the response body), and the connection model (`kill` refuses new requests and cuts
open ones with the same httpx errors). What is skipped is only framing: a non-streaming
completion is answered by calling the handler in the caller's task and wrapping its body in an
`httpx.Response`; a streaming one still runs through the ASGI exchange (chunk timing is the
point there), but without Starlette's stack; every other path (health, metrics, tokenize,
embeddings, admin) goes through the full app unchanged.

`tests/test_virtual_direct.py` pins that a replay through this transport makes the same
decisions with the same timings as through `StreamingASGITransport`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sage_cp_plugin.sim.app import SimInstance
from sage_cp_plugin.sim.protocol import SimHTTPError, error_response
from sage_cp_plugin.sim.streaming import SSEResponse
from sage_cp_plugin.virtual.transport import StreamingASGITransport


class DirectSimTransport(StreamingASGITransport):
    """`StreamingASGITransport` with a direct path for completions (see the module doc)."""

    def __init__(self, app: ASGIApp, sim: SimInstance) -> None:
        super().__init__(app)
        self.sim = sim
        self._handlers = {
            "/v1/completions": sim.completions,
            "/v1/chat/completions": sim.chat_completions,
        }
        self._kills = 0  # bumped by `kill`: a direct call that spans a kill fails like a cut

    def kill(self) -> None:
        self._kills += 1
        super().kill()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        handler = self._handlers.get(request.url.path) if request.method == "POST" else None
        if handler is None:
            return await super().handle_async_request(request)
        if not self.alive:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        body = await request.aread()
        kills = self._kills
        scope: dict[str, Any] = {"type": "http", "method": "POST", "headers": []}

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        # The ASGI path starts the app as a task, so the handler runs one loop iteration
        # later; yield once here too, so requests reach the engine in the same order relative
        # to its steps (same-instant events) and timings stay identical.
        await asyncio.sleep(0)
        try:
            resp = await handler(Request(scope, receive))
        except SimHTTPError as exc:
            resp = error_response(exc.status, exc.message, exc.param)
        except Exception:
            # As the full app (and uvicorn) would answer a handler's crash.
            resp = None
        if self._kills != kills:
            raise httpx.RemoteProtocolError("server disconnected without sending a response")
        if resp is None:
            return httpx.Response(500, text="Internal Server Error", request=request)
        if isinstance(resp, SSEResponse):
            return await self._stream(resp, request, body)
        # The body as a stream, as a socket or the ASGI exchange hands it over: the client
        # reads it, and Starlette's headers already carry its length and type.
        return httpx.Response(
            resp.status_code,
            headers=resp.raw_headers,
            stream=httpx.ByteStream(bytes(resp.body)),
            request=request,
        )

    async def _stream(
        self, resp: SSEResponse, request: httpx.Request, body: bytes
    ) -> httpx.Response:
        """Run the handler's SSE response through the exchange, as the full app would."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await resp(scope, receive, send)

        scope: dict[str, Any] = {"type": "http", "method": "POST", "headers": []}
        return await self._exchange(app, scope, body, request)
