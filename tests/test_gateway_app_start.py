"""When the gateway's protocol starts the application for a request (connections.py), and
start-up objects frozen out of garbage collection (gc_policy.py).

A real uvicorn server with the gateway's protocol class on real sockets, and an ASGI app
that records every call and echoes the length of the body it read: the app must not start
for a body still on its way, must start for every request that can make progress (bodies
complete, uploads past a flow-control window, 100-continue, pipelined requests), and a body
that never comes must cost no app call at all.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import uvicorn
from sage_cp_plugin.entrypoints.gateway.connections import ConnectionLimits, guarded_protocol
from sage_cp_plugin.entrypoints.gateway.server import _EmbeddedServer, _Server, bound_port
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from tests.helpers import wait_until

HANG = 20.0  # only bounds a broken build


class Recorder:
    """ASGI app: counts calls, reads the whole body, answers with its length."""

    def __init__(self) -> None:
        self.calls = 0
        self.finished = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(size).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.finished += 1


@asynccontextmanager
async def served(
    app: Any, server_class: type[_Server] = _EmbeddedServer, **limits: float
) -> AsyncIterator[tuple[int, _Server]]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_level="warning",
        http=guarded_protocol(ConnectionLimits(**limits)),  # type: ignore[arg-type]
    )
    server = server_class(config, SimpleNamespace(shutting_down=False))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), "the server to start")
        yield bound_port(server, 0), server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, HANG)


def _phases(server: _Server) -> list[str]:
    return [c._phase for c in server.server_state.connections]  # type: ignore[attr-defined]


async def _request(port: int, head: bytes, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    data = await asyncio.wait_for(reader.read(), HANG)
    writer.close()
    return data


def _post(size: int, extra: bytes = b"") -> bytes:
    return b"POST /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n%s\r\n" % (
        size,
        extra,
    )


async def test_the_app_starts_only_once_the_body_has_arrived() -> None:
    app = Recorder()
    async with served(app) as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post(10) + b"01234")
        await wait_until(lambda: _phases(server) == ["body"], "the headers to be parsed")
        assert app.calls == 0 and not server.server_state.tasks
        writer.write(b"56789")
        data = await asyncio.wait_for(reader.read(), HANG)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n10")
        assert app.calls == 1
        writer.close()
        # Requests without a body start at once, as before.
        get = await _request(port, b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert get.endswith(b"\r\n\r\n0") and app.calls == 2


async def test_a_body_that_never_comes_costs_no_app_call() -> None:
    app = Recorder()
    async with served(app, body_timeout_s=0.3) as (port, _server):
        data = await _request(port, _post(1000), b'{"model":')
        assert data.startswith(b"HTTP/1.1 408")
        assert app.calls == 0


async def test_a_connection_closed_before_its_body_came_is_freed_without_the_gc() -> None:
    # Freed by reference counting as soon as it closes: left to the cyclic collector, 1,000
    # such connections would be scanned (and freed) only by a full collection.
    app = Recorder()
    async with served(app, body_timeout_s=0.3) as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post(1000) + b"{")
        await wait_until(lambda: _phases(server) == ["body"], "the headers to be parsed")
        (protocol,) = server.server_state.connections
        gone = weakref.ref(protocol)
        del protocol
        gc.disable()
        try:
            assert (await asyncio.wait_for(reader.read(), HANG)).startswith(b"HTTP/1.1 408")
            writer.close()
            await wait_until(lambda: gone() is None, "the closed connection to be freed")
        finally:
            gc.enable()
        assert app.calls == 0


async def test_a_large_upload_starts_the_app_once_a_flow_control_window_waits() -> None:
    app = Recorder()
    size = 8 * HIGH_WATER_LIMIT
    async with served(app) as (port, _server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post(size) + b"a" * (2 * HIGH_WATER_LIMIT))
        # Before the body is complete the app is reading it (reading was paused for it).
        await wait_until(lambda: app.calls == 1, "the app to start on a partial upload")
        assert app.finished == 0
        writer.write(b"a" * (size - 2 * HIGH_WATER_LIMIT))
        data = await asyncio.wait_for(reader.read(), HANG)
        assert data.endswith(b"\r\n\r\n%d" % size)
        writer.close()


async def test_expect_100_continue_starts_the_app_so_the_client_gets_its_continue() -> None:
    app = Recorder()
    async with served(app) as (port, _server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post(5, b"expect: 100-continue\r\n"))
        line = await asyncio.wait_for(reader.readline(), HANG)
        assert line.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        data = await asyncio.wait_for(reader.read(), HANG)
        assert b"HTTP/1.1 200" in data and data.endswith(b"\r\n\r\n5")
        writer.close()


async def test_pipelined_requests_with_bodies_are_all_answered_in_order() -> None:
    app = Recorder()
    keep = b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
    async with served(app) as (port, _server):
        data = await _request(port, keep % 3 + b"abc" + keep % 1 + b"z" + _post(2), b"xy")
        answers = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in data.split(b"HTTP/1.1 200")[1:]]
        assert [a[:1] for a in answers] == [b"3", b"1", b"2"]
        assert app.calls == 3


async def test_a_serving_process_freezes_its_start_up_objects_and_embedded_does_not() -> None:
    gc.unfreeze()
    try:
        async with served(Recorder()):
            assert gc.get_freeze_count() == 0  # embedded: the owner's GC is left alone
        async with served(Recorder(), server_class=_Server) as (port, _server):
            frozen = gc.get_freeze_count()
            assert frozen > 1000  # modules, classes, the app: everything made so far
            # Serving goes on after the freeze.
            assert (await _request(port, _post(2), b"ok")).endswith(b"\r\n\r\n2")
    finally:
        gc.unfreeze()  # this test process keeps its own collection as it was
