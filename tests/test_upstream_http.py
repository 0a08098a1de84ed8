"""The executor's own HTTP/1.1 client (upstream_http.py) against a scripted raw server: the
framings an instance may use, keep-alive reuse, the connection limit, and every way an
answer can break (each must become the httpx error the executor reports, never a hang)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from sage_cp_plugin.upstream_http import UpstreamPool
from tests.helpers import wait_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()


async def _read_request(reader: asyncio.StreamReader, server: Server) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    server.requests.append(head + body)
    return True


@contextlib.asynccontextmanager
async def serving(
    answers: list[bytes | Handler],
) -> AsyncIterator[tuple[str, Server]]:
    """A server that answers its requests, in order over all connections, with `answers`
    (raw bytes, or a coroutine writing to the connection itself)."""
    server = Server()
    queue = list(answers)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while queue and await _read_request(reader, server):
                answer = queue.pop(0)
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    await answer(reader, writer)
                if writer.is_closing():
                    break
            # The client closing its side ends the connection here.
            await reader.read()
        except ConnectionError:
            pass
        finally:
            writer.close()
            server.closed.set()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        srv.close()


def pool(url: str, **kw: float) -> UpstreamPool:
    args = {"max_connections": 8, "keepalive_expiry_s": 5.0, "connect_timeout_s": 2.0,
            "timeout_s": 5.0} | kw  # fmt: skip
    return UpstreamPool(url, **args)  # type: ignore[arg-type]


def chunked(*pieces: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    for p in pieces:
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return out + b"0\r\n\r\n"


def plain(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status.encode(), len(body), extra, body)  # fmt: skip


async def test_request_bytes_and_keep_alive_reuse() -> None:
    async with serving([plain(b"one"), chunked(b"t", b"wo")]) as (url, server):
        p = pool(url)
        async with p.post(b"/v1/completions", b'{"a":1}', {"x-extra": "v"}) as answer:
            assert answer.status_code == 200
            assert await answer.aread() == b"one"
        got: list[bytes] = []
        async with p.post(b"/v1/completions", b"{}", {}) as answer:
            await answer.read_into(got.append)
        assert b"".join(got) == b"two"
        assert server.connections == 1  # the second request reused the first connection
        first = server.requests[0]
        assert first.startswith(b"POST /v1/completions HTTP/1.1\r\n")
        assert b"\r\nx-extra: v\r\n" in first
        assert b"\r\ncontent-length: 7\r\n" in first
        assert first.endswith(b'\r\n\r\n{"a":1}')
        p.close()


async def test_status_reason_and_headers_of_an_error_answer() -> None:
    async with serving([plain(b'{"error":"busy"}', "429 Too Many", b"Retry-After: 3\r\n")]) as (
        url,
        _server,
    ):
        async with pool(url).post(b"/x", b"", {}) as answer:
            assert (answer.status_code, answer.reason_phrase) == (429, "Too Many")
            assert answer.headers["retry-after"] == "3"
            assert await answer.aread() == b'{"error":"busy"}'


async def test_a_body_without_length_ends_with_the_connection_and_is_not_reused() -> None:
    async def until_close(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await w.drain()
        w.close()

    async with serving([until_close, plain(b"next")]) as (url, server):
        p = pool(url)
        async with p.post(b"/x", b"", {}) as answer:
            assert await answer.aread() == b"all of it"
        async with p.post(b"/x", b"", {}) as answer:
            assert await answer.aread() == b"next"
        assert server.connections == 2


async def test_connection_close_answer_is_not_reused() -> None:
    async with serving([plain(b"a", extra=b"connection: close\r\n"), plain(b"b")]) as (url, srv):
        p = pool(url)
        for want in (b"a", b"b"):
            async with p.post(b"/x", b"", {}) as answer:
                assert await answer.aread() == want
        assert srv.connections == 2


async def test_cut_mid_body_is_a_remote_protocol_error() -> None:
    async def cut(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await w.drain()
        w.close()

    async with serving([cut]) as (url, _):
        with pytest.raises(httpx.RemoteProtocolError):
            async with pool(url).post(b"/x", b"", {}) as answer:
                await answer.aread()


async def test_closed_before_answering_is_a_read_error() -> None:
    async def close(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    async with serving([close]) as (url, _):
        with pytest.raises(httpx.ReadError):
            async with pool(url).post(b"/x", b"", {}):
                pass


async def test_garbage_is_a_remote_protocol_error() -> None:
    async with serving([b"NOT HTTP AT ALL\r\n\r\n"]) as (url, _):
        with pytest.raises(httpx.RemoteProtocolError):
            async with pool(url).post(b"/x", b"", {}):
                pass


async def test_silence_is_a_read_timeout_and_closes_the_connection() -> None:
    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()  # then nothing more

    async with serving([silent]) as (url, server):
        got: list[bytes] = []
        with pytest.raises(httpx.ReadTimeout):
            async with pool(url, timeout_s=0.2).post(b"/x", b"", {}) as answer:
                await answer.read_into(got.append)
        assert got == [b"first"]
        await asyncio.wait_for(server.closed.wait(), 5)  # the instance sees the request end


async def test_refused_connection_is_a_connect_error() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(httpx.ConnectError):
        async with pool(f"http://127.0.0.1:{port}").post(b"/x", b"", {}):
            pass


async def test_an_error_raised_by_feed_ends_the_answer_and_drops_the_connection() -> None:
    class Refused(Exception):
        pass

    def feed(_data: bytes) -> None:
        raise Refused

    async def half(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nbad\r\n")
        await w.drain()
        await r.read()  # the rest never comes: the client must give up the connection
        w.close()

    async with serving([half, plain(b"ok")]) as (url, server):
        p = pool(url)
        with pytest.raises(Refused):
            async with p.post(b"/x", b"", {}) as answer:
                await answer.read_into(feed)
        await asyncio.wait_for(server.closed.wait(), 5)  # the instance sees the request end
        async with p.post(b"/x", b"", {}) as answer:
            assert await answer.aread() == b"ok"
        assert server.connections == 2


async def test_connection_limit_makes_a_second_request_wait_for_the_first() -> None:
    release = asyncio.Event()

    async def slow(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await release.wait()
        w.write(plain(b"first"))

    async with serving([slow, plain(b"second")]) as (url, server):
        p = pool(url, max_connections=1)
        order: list[bytes] = []

        async def one() -> None:
            async with p.post(b"/x", b"", {}) as answer:
                order.append(await answer.aread())

        first = asyncio.create_task(one())
        await wait_until(lambda: len(server.requests) == 1, "the first request")
        second = asyncio.create_task(one())
        await asyncio.sleep(0.05)  # the second had its chance to send: it must still wait
        assert not second.done() and len(server.requests) == 1
        release.set()
        await asyncio.gather(first, second)
        assert order == [b"first", b"second"]
        assert server.connections == 1


async def test_waiting_for_a_connection_past_the_timeout_is_a_pool_timeout() -> None:
    async def never(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async with serving([never]) as (url, server):
        p = pool(url, max_connections=1, timeout_s=0.3)
        hold = asyncio.create_task(_post_and_read(p))
        await wait_until(lambda: len(server.requests) == 1, "the first request")
        with pytest.raises(httpx.TimeoutException):
            await _post_and_read(p)
        hold.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await hold


async def _post_and_read(p: UpstreamPool) -> bytes:
    async with p.post(b"/x", b"", {}) as answer:
        return await answer.aread()


async def test_a_connection_idle_past_the_expiry_is_not_reused() -> None:
    # The executor's expiry is under vLLM's (uvicorn's) 5 s keep-alive, so a request is never
    # written into a connection the instance is closing; here the idle time is set back
    # instead of waited for.
    from sage_cp_plugin.executor import KEEPALIVE_EXPIRY_S

    assert KEEPALIVE_EXPIRY_S < 5.0
    async with serving([plain(b"one"), plain(b"two"), plain(b"three")]) as (url, server):
        p = pool(url, keepalive_expiry_s=KEEPALIVE_EXPIRY_S)
        async with p.post(b"/x", b"", {}) as answer:
            assert await answer.aread() == b"one"
        async with p.post(b"/x", b"", {}) as answer:  # idle for no time: reused
            assert await answer.aread() == b"two"
        assert server.connections == 1
        (idle,) = p._idle
        idle.idle_since -= KEEPALIVE_EXPIRY_S
        async with p.post(b"/x", b"", {}) as answer:
            assert await answer.aread() == b"three"
        assert server.connections == 2  # a fresh connection, the expired one closed
        assert idle.closed
        p.close()
