"""The executor's HTTP/1.1 client for requests to instances: asyncio protocols and
httptools' parser (C), one keep-alive pool per instance.

Why not aiohttp (the client before it): an upstream stream brings one network read per
token, and aiohttp spends Python on each (its protocol's `data_received`, the stream
reader's buffers, then waking the reading task, which takes the bytes out again): about
half of the gateway's CPU per request against zero-latency instances, streamed or not
(benchmarks/results/gateway_cpu_s14.md). Here the parser calls back with each body piece
and the answer hands it straight to the caller's `feed` (`read_into`; the executor's
stream parser, `stream_parse.StreamParse`) inside the read callback: the attempt's task
sleeps until the answer is complete. Only what an attempt needs is here: POST with a
known-length body, answers with Content-Length, chunked or read-to-close bodies,
keep-alive, a connection limit, the timeouts, and httpx's exception types for failures
(the executor reports them as before).

Timeouts, as the aiohttp client had them: `connect_timeout_s` to open a connection,
`timeout_s` to get one from the pool (waiting for a free one included) and as the longest
silence while reading an answer (reset by every read).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import cast

import httptools
import httpx

Feed = Callable[[bytes], None]


class _Answer:
    """One exchange on one connection: the answer's status and headers, its body handed to
    `feed` (or kept until `aread`), and its end. Provides what `UpstreamAnswer` names."""

    __slots__ = (
        "_body",
        "_done",
        "_feed",
        "_headers_in",
        "complete",
        "failed",
        "headers",
        "keep_alive",
        "reason_phrase",
        "started",
        "status_code",
        "timer",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.reason_phrase = ""
        self._body: list[bytes] = []
        self._feed: Feed | None = None
        self._headers_in: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self.failed: BaseException | None = None
        self.timer: asyncio.TimerHandle | None = None  # the read timeout's
        self.complete = False  # the whole answer was read: the connection may be reused
        self.keep_alive = False
        self.started = False  # any byte of the answer arrived

    # -- from the connection ---------------------------------------------------------------
    def on_headers(self, status: int) -> None:
        self.status_code = status
        if not self._headers_in.done():
            self._headers_in.set_result(None)

    def on_body(self, data: bytes) -> None:
        if self.failed is not None:
            return
        feed = self._feed
        if feed is None:
            self._body.append(data)
            return
        try:
            feed(data)
        except BaseException as exc:  # the caller's parser refused it: its error is the answer's
            self.fail(exc)

    def on_complete(self, keep_alive: bool) -> None:
        self.complete = self.failed is None
        self.keep_alive = keep_alive
        if not self._done.done():
            self._done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.failed is not None or self.complete:
            return
        self.failed = exc
        for fut in (self._headers_in, self._done):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: one of the two may never be awaited

    # -- for the caller --------------------------------------------------------------------
    async def wait_headers(self) -> None:
        await self._headers_in

    async def aread(self) -> bytes:
        await self._done
        body, self._body = b"".join(self._body), []
        return body

    async def read_into(self, feed: Feed) -> None:
        """Hand the body to `feed` as it arrives (from the connection's read callback), and
        return when it has all arrived; an exception `feed` raises ends the answer with it."""
        body, self._body = self._body, []
        try:
            for piece in body:
                feed(piece)
        except BaseException as exc:
            self.fail(exc)  # the connection is dropped unless the answer is already complete
            raise
        self._feed = feed
        await self._done

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        yield await self.aread()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one answer at a time, parsed by httptools."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: _Answer | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self._headers: dict[str, str] = {}
        self._reason = ""
        self._until_close = False  # the answer's body has no length: it ends at the close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None:  # nothing asked: a server speaking out of turn
            self.close()
            return
        self.last_read = self.pool.loop.time()
        answer.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            answer.fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self.answer
        if answer is None or answer.complete:
            return
        if self._until_close and exc is None:
            answer.on_complete(False)  # a body without a length ends with the connection
            return
        what = "the instance closed the connection" if exc is None else str(exc)
        answer.fail(
            httpx.RemoteProtocolError(f"{what} before the answer was complete")
            if answer.started
            else httpx.ReadError(f"{what} before answering")
        )

    # -- httptools callbacks ---------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        answer = self.answer
        if answer is not None:
            headers = answer.headers = self._headers
            self._headers = {}
            answer.reason_phrase = self._reason
            status = self.parser.get_status_code()
            self._until_close = (
                "content-length" not in headers
                and "chunked" not in headers.get("transfer-encoding", "").lower()
                and status >= 200
                and status not in (204, 304)
            )
            answer.on_headers(status)

    def on_body(self, body: bytes) -> None:
        if self.answer is not None:
            self.answer.on_body(body)

    def on_message_complete(self) -> None:
        if self.answer is not None:
            self.answer.on_complete(self.parser.should_keep_alive())

    # -- for the pool ----------------------------------------------------------------------
    def start(self, head: bytes, content: bytes) -> _Answer:
        answer = self.answer = _Answer(self.pool.loop)
        self.last_read = self.pool.loop.time()
        assert self.transport is not None
        self.transport.write(head + content if len(content) < 65536 else head)
        if len(content) >= 65536:
            self.transport.write(content)  # not copied into one buffer with the head
        return answer

    def check_read_timeout(self, answer: _Answer) -> None:
        """Fail the answer after `read_timeout_s` without a read; checked lazily (one timer
        per answer, re-armed from the last read) instead of rescheduling a timer per read."""
        if self.answer is not answer or answer.complete or answer.failed is not None:
            return
        pool = self.pool
        due = self.last_read + pool.read_timeout_s
        if pool.loop.time() >= due:
            answer.fail(
                httpx.ReadTimeout(f"no data from the instance for {pool.read_timeout_s:g} s")
            )
            self.close()
        else:
            answer.timer = pool.loop.call_at(due, self.check_read_timeout, answer)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # at once: the instance sees the request cancelled


class UpstreamPool:
    """Connections to one instance (`base_url`), at most `max_connections` (0: no limit),
    idle ones reused for `keepalive_expiry_s`."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        keepalive_expiry_s: float,
        connect_timeout_s: float,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        self.host = url.host
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        host_header = self.host if url.port is None else f"{self.host}:{url.port}"
        if ":" in self.host:  # IPv6 literal
            host_header = f"[{self.host}]" + (f":{url.port}" if url.port else "")
        self._host_line = f"host: {host_header}\r\nuser-agent: sage-cp\r\n".encode("latin-1")
        self.ssl_context = ssl_context if self.tls else None
        self.max_connections = max_connections
        self.keepalive_expiry_s = keepalive_expiry_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = timeout_s
        self.pool_timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closing = False

    def _head(self, target: bytes, content: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [b"POST ", target, b" HTTP/1.1\r\n", self._host_line]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"content-length: %d\r\n\r\n" % len(content))
        return b"".join(lines)

    @contextlib.asynccontextmanager
    async def post(
        self, target: bytes, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[_Answer]:
        """POST `content` to `target` (the path and query); yields the answer once its headers are in, its body
        unread. On exit the connection goes back to the pool if the answer was read to its
        end, and is closed otherwise (the instance stops the request)."""
        conn = await self._acquire()
        answer: _Answer | None = None
        try:
            answer = conn.start(self._head(target, content, headers), content)
            answer.timer = self.loop.call_at(
                conn.last_read + self.read_timeout_s, conn.check_read_timeout, answer
            )
            await answer.wait_headers()
            yield answer
        finally:
            reuse = False
            if answer is not None:
                reuse = answer.complete and answer.keep_alive
                if answer.timer is not None:
                    answer.timer.cancel()
            self._release(conn, reuse)

    async def _acquire(self) -> _Connection:
        if self._closing:
            raise httpx.ConnectError("the instance's connection pool is closed")
        deadline = self.loop.time() + self.pool_timeout_s
        while True:
            now = self.loop.time()
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely stale
                if not conn.closed and now - conn.idle_since < self.keepalive_expiry_s:
                    return conn
                self._drop(conn)
            if self.max_connections <= 0 or self._open < self.max_connections:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout(
                    f"no free connection to {self.host}:{self.port} "
                    f"within {self.pool_timeout_s:g} s"
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {self.host}:{self.port} took over {self.connect_timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def _release(self, conn: _Connection, reuse: bool) -> None:
        conn.answer = None
        if reuse and not conn.closed and not self._closing:
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake()

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close the idle connections; those in use close when their answer ends."""
        self._closing = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)


def client_ssl_context() -> ssl.SSLContext:
    """The verification httpx (and so the aiohttp client before) used: certifi's roots."""
    return httpx.create_ssl_context(trust_env=False)
