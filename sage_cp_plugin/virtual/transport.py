"""An httpx transport that calls an ASGI app in-process and streams its response.

`httpx.ASGITransport` runs the app to completion and buffers the whole body before returning,
so a streamed answer arrives in one piece and the executor would measure TTFT as E2E. Here the
app runs as its own task and every `http.response.body` message is handed to the reader as it
is sent, so chunk timing is the app's timing -- on a real or a virtual clock alike.

The transport also models the connection: `kill()` makes new requests fail with
`httpx.ConnectError` (connection refused) and cuts open streams with
`httpx.RemoteProtocolError` (peer closed the connection), which is what a crashed vLLM server
looks like to the executor over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

_END = object()  # body finished normally


class _Exchange:
    """One request/response on the wire: the ASGI side (receive/send) and the client side."""

    __slots__ = ("body", "chunks", "disconnected", "request_sent", "started", "task")

    def __init__(self, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.body = body
        self.request_sent = False
        self.disconnected: asyncio.Future[None] = loop.create_future()
        self.started: asyncio.Future[Message] = loop.create_future()
        self.chunks: asyncio.Queue[object] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if not self.request_sent:
            self.request_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await asyncio.shield(self.disconnected)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if not self.started.done():
                self.started.set_result(message)
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                self.chunks.put_nowait(bytes(body))
            if not message.get("more_body", False):
                self.chunks.put_nowait(_END)

    def fail(self, exc: BaseException) -> None:
        """The connection broke: the reader sees `exc` (before or after the headers)."""
        if not self.started.done():
            self.started.set_exception(exc)
        self.chunks.put_nowait(exc)

    def close(self) -> None:
        if not self.disconnected.done():
            self.disconnected.set_result(None)
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _StreamBody(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange, transport: StreamingASGITransport) -> None:
        self._x = exchange
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._x.chunks
        while True:
            item = await chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    async def aclose(self) -> None:
        self._x.close()
        self._transport.open.discard(self._x)


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Mount `app` as the server behind an `httpx.AsyncClient` (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.app = app
        self.client = client
        self.alive = True
        self.open: set[_Exchange] = set()

    def kill(self) -> None:
        """Crash the server: refuse new connections and reset the open ones."""
        self.alive = False
        for x in list(self.open):
            x.fail(httpx.RemoteProtocolError("server disconnected without sending a response"))
            x.close()
        self.open.clear()

    def revive(self) -> None:
        self.alive = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.alive:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        body = await request.aread()
        url = request.url
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.split(b"?")[0],
            "query_string": url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": self.client,
            "server": (url.host, url.port),
            "state": {},
        }
        return await self._exchange(self.app, scope, body, request)

    async def _exchange(
        self, app: ASGIApp, scope: dict[str, Any], body: bytes, request: httpx.Request
    ) -> httpx.Response:
        """Run `app` for one request as a task; answer once its response has started, with
        the body streamed from the exchange."""
        start, stream = await self._open(app, scope, body)
        return httpx.Response(
            status_code=start["status"],
            headers=start.get("headers", []),
            stream=stream,
            request=request,
        )

    async def _open(
        self, app: ASGIApp, scope: dict[str, Any], body: bytes
    ) -> tuple[Message, _StreamBody]:
        """Start `app` on one request as a task: its `http.response.start` message, once
        sent, and its body as a stream."""
        x = _Exchange(body)
        x.task = asyncio.create_task(self._serve_app(app, scope, x))
        self.open.add(x)
        try:
            start = await x.started
        except BaseException:
            self.open.discard(x)
            x.close()
            raise
        return start, _StreamBody(x, self)

    async def _serve_app(self, app: ASGIApp, scope: dict[str, Any], x: _Exchange) -> None:
        try:
            await app(scope, x.receive, x.send)
        except asyncio.CancelledError:
            x.fail(httpx.ReadError("the response was cancelled"))
            raise
        except Exception as exc:
            if x.started.done():
                # Headers already went out: the server drops the connection mid-body.
                x.fail(httpx.RemoteProtocolError(f"peer closed connection: {exc!r}"))
            else:
                # Like uvicorn: an app error before the headers becomes a plain 500.
                await x.send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await x.send({"type": "http.response.body", "body": b"Internal Server Error"})
        else:
            if not x.started.done():
                x.fail(httpx.RemoteProtocolError("the app returned without a response"))
            else:
                x.chunks.put_nowait(_END)  # harmless duplicate when the body already ended

    async def aclose(self) -> None:
        for x in list(self.open):
            x.close()
        self.open.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)
