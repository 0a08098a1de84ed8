"""Connection deadlines (entrypoints/gateway/deadlines.py): a connection is closed AT its
deadline, not at the next tick of a periodic sweep.

The first tests drive `Deadlines` on a hand-stepped clock (a stand-in for the event loop's
`time()`/`call_at`, so when each connection expires is exact and load cannot disturb it).
The last ones run uvicorn with the gateway's protocol class over real sockets and check the
server's own bookkeeping: the one timer waits for the open connection's deadline, and the
connection is closed no earlier than it (the upper bound there is deliberately loose: a
loaded machine delays any event loop).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from sage_cp_plugin.entrypoints.gateway.connections import (
    ConnectionLimits,
    GuardedHttpToolsProtocol,
    guarded_protocol,
)
from sage_cp_plugin.entrypoints.gateway.deadlines import Deadlines

from tests.helpers import wait_until


class SteppedLoop:
    """`time()` and `call_at()` of an event loop whose clock the test moves; `advance(t)`
    runs every timer due by `t` at its own time, as an idle loop would."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.timers: list[tuple[float, Callable[[], None], list[bool]]] = []
        self.wakeups = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        cancelled = [False]
        self.timers.append((when, callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    def advance(self, to: float) -> None:
        while True:
            due = sorted((t for t in self.timers if not t[2][0] and t[0] <= to),
                         key=lambda t: t[0])  # fmt: skip
            if not due:
                break
            when, callback, _ = due[0]
            self.timers.remove(due[0])
            self.now = max(self.now, when)
            self.wakeups += 1
            callback()
        self.now = to


class Conn:
    def __init__(self, loop: SteppedLoop, name: str = "") -> None:
        self.loop, self.name = loop, name
        self.expired_at: float | None = None

    def expire(self) -> None:
        assert self.expired_at is None, "expired twice"
        self.expired_at = self.loop.time()


def _deadlines(loop: SteppedLoop) -> Deadlines:
    return Deadlines(loop, resolution_s=0.01)  # type: ignore[arg-type]


def test_each_connection_expires_at_its_own_deadline_not_at_a_sweep_tick() -> None:
    loop = SteppedLoop()
    d = _deadlines(loop)
    t0 = loop.now
    header = Conn(loop)
    d.arm(header, 5.0)  # a connection opens: headers due in 5 s
    assert d.timer_at == t0 + 5.0  # the one timer waits for exactly that deadline
    loop.advance(t0 + 0.3)
    body = Conn(loop)
    d.arm(body, 5.0)  # headers parsed 0.3 s later: body due at t0 + 5.3
    idle = Conn(loop)
    d.arm(idle, 30.0)
    loop.advance(t0 + 40.0)
    assert header.expired_at == t0 + 5.0
    assert body.expired_at == t0 + 5.3  # a 0.5 s sweep closed this one at t0 + 6.0
    assert idle.expired_at == t0 + 30.3
    assert len(d) == 0 and d.timer_at == math.inf  # nothing armed: no timer left running


def test_a_cancelled_or_rearmed_deadline_never_fires_and_the_new_one_does() -> None:
    loop = SteppedLoop()
    d = _deadlines(loop)
    t0 = loop.now
    served, rearmed = Conn(loop), Conn(loop)
    d.cancel(d.arm(served, 5.0))  # its request arrived in time
    first = d.arm(rearmed, 5.0)  # header phase ...
    loop.advance(t0 + 1.0)
    d.cancel(first)
    d.arm(rearmed, 10.0)  # ... then the body phase: due at t0 + 11
    loop.advance(t0 + 60.0)
    assert served.expired_at is None
    assert rearmed.expired_at == t0 + 11.0


def test_lateness_is_bounded_by_the_resolution_however_many_connections_are_open() -> None:
    loop = SteppedLoop()
    d = _deadlines(loop)
    conns = []
    for _ in range(1000):  # connections arriving 1 ms apart, the header timeout 5 s
        c = Conn(loop)
        deadline = loop.now + 5.0
        d.arm(c, 5.0)
        conns.append((c, deadline))
        loop.advance(loop.now + 0.001)
    loop.advance(loop.now + 10.0)
    lateness = [c.expired_at - deadline for c, deadline in conns if c.expired_at is not None]
    assert len(lateness) == 1000
    assert min(lateness) >= 0.0  # never early
    assert max(lateness) <= 0.01 + 1e-9  # at most one resolution late
    # Deadlines a millisecond apart share wake-ups: about one per resolution, not one each.
    assert loop.wakeups <= 1000 * 0.001 / 0.01 + 2


def test_a_burst_of_simultaneous_deadlines_is_expired_in_batches_between_loop_turns() -> None:
    loop = SteppedLoop()
    d = Deadlines(loop, resolution_s=0.01, batch=64)  # type: ignore[arg-type]
    conns = [Conn(loop) for _ in range(1000)]  # opened together, so due together
    for c in conns:
        d.arm(c, 5.0)
    due = loop.now + 5.0
    loop.advance(due)
    assert all(c.expired_at == due for c in conns)  # all of them, none late on this clock
    # Not one callback expiring 1,000 (tens of ms during which normal requests wait) but
    # ceil(1000 / 64) turns, each giving the loop back in between.
    assert loop.wakeups == 16


def test_cancelled_entries_do_not_accumulate_under_a_high_request_rate() -> None:
    loop = SteppedLoop()
    d = _deadlines(loop)
    open_conns = [Conn(loop) for _ in range(10)]
    entries = [d.arm(c, 60.0) for c in open_conns]
    for _ in range(100_000):  # requests whose body arrives at once: arm, then cancel
        d.cancel(d.arm(Conn(loop), 60.0))
        loop.now += 0.0001  # 10,000 requests/s, all within the 60 s body timeout
    assert len(d) == 10
    assert d.queued() <= 2 * len(d) + 64 + 1  # not 100,000 stale entries
    loop.advance(loop.now + 61.0)
    assert all(c.expired_at is not None for c in open_conns)
    assert all(e[1] is None for e in entries)


# -- the gateway's protocol over real sockets ---------------------------------------------
async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def _server(
    limits: ConnectionLimits,
) -> AsyncIterator[tuple[uvicorn.Server, type[GuardedHttpToolsProtocol], int]]:
    protocol = guarded_protocol(limits)
    config = uvicorn.Config(_app, host="127.0.0.1", port=0, http=protocol, lifespan="off",
                            log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), "uvicorn started")
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield server, protocol, port
    finally:
        server.should_exit = True
        await task


def _only_connection(server: uvicorn.Server) -> GuardedHttpToolsProtocol:
    (conn,) = server.server_state.connections
    assert isinstance(conn, GuardedHttpToolsProtocol)
    return conn


async def test_the_server_timer_waits_for_a_slow_connection_deadline_and_closes_it_then() -> None:
    limits = ConnectionLimits(header_timeout_s=0.5, body_timeout_s=1.0, keep_alive_s=0.5)
    loop = asyncio.get_running_loop()
    async with _server(limits) as (server, protocol, port):
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await wait_until(lambda: len(server.server_state.connections) == 1, "accepted")
        conn = _only_connection(server)
        deadlines = protocol._deadlines
        assert deadlines is not None
        header_deadline = conn.deadline_at
        assert started + 0.5 <= header_deadline < math.inf
        assert deadlines.timer_at == header_deadline  # not the next tick of a sweep
        # The headers arrive; the body never completes: the body deadline takes over, and
        # once the stale header deadline has passed the timer waits for exactly that one.
        sent = loop.time()
        writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        await wait_until(lambda: conn.deadline_at >= sent + 1.0 > header_deadline,
                         "body deadline armed")  # fmt: skip
        body_deadline = conn.deadline_at
        await wait_until(lambda: deadlines.timer_at == body_deadline or conn.transport.is_closing(),
                         "timer moved to the body deadline")  # fmt: skip
        data = await asyncio.wait_for(reader.read(), 20.0)
        closed = loop.time()
        assert data.startswith(b"HTTP/1.1 408") and b"body_timeout" in data
        assert closed >= body_deadline  # never early
        # Loose on purpose (a loaded machine delays every loop); the exact timing is the
        # stepped-clock tests' and the benchmark's.
        assert closed - body_deadline < 1.0
        writer.close()
    assert deadlines.timer_at == math.inf and len(deadlines) == 0
