"""Connection limits (entrypoints/gateway/connections.py) on a real gateway over sockets.

Behaviour only: which connections are closed, with which status and JSON error; how fast
is measured by benchmarks/bench_hostile.py. Timeouts are short here so the tests are quick;
the `wait_for` bounds only keep a broken build from hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import httpx

from tests.test_gateway_support import gateway_over_sim, gen

LIMITS = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "keep_alive_s": 0.5}
HANG = 20.0  # far above every timeout: only a missing limit would reach it


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


def _status_and_error(data: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower()
    err: dict[str, object] = json.loads(body)["error"]
    return status, err


async def test_headers_that_never_finish_are_cut_off_even_when_dribbled() -> None:
    async with gateway_over_sim(gen(1), settings=LIMITS) as h:
        reader, writer = await _open(h.url)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        # Slowloris: one header byte at a time, forever; each byte used to reset the timer.
        closed = asyncio.create_task(reader.read())
        for _ in range(int(HANG / 0.05)):
            if closed.done():
                break
            writer.write(b"a")
            await asyncio.sleep(0.05)  # the client's pace, not a synchronisation
        status, err = _status_and_error(await asyncio.wait_for(closed, HANG))
        assert status == 408 and err["code"] == "header_timeout"
        writer.close()


async def test_a_body_that_stops_arriving_gets_408_and_the_connection_is_closed() -> None:
    async with gateway_over_sim(gen(1), settings=LIMITS) as h:
        before = _metric(await _metrics(h.url), 'sage_cp_connections_closed_total{limit="body"}')
        reader, writer = await _open(h.url)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"model":'
        )
        data = await asyncio.wait_for(reader.read(), HANG)
        status, err = _status_and_error(data)
        assert status == 408 and err["code"] == "body_timeout"
        writer.close()
        # Operators see it on /metrics: one more body close, and how late deadlines ran.
        text = await _metrics(h.url)
        assert _metric(text, 'sage_cp_connections_closed_total{limit="body"}') == before + 1
        assert _metric(text, "sage_cp_connection_deadlines_expired_total") >= 1
        assert _metric(text, "sage_cp_connection_deadline_lateness_max_seconds") >= 0


async def _metrics(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as c:
        return (await c.get("/metrics")).text


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_idle_keep_alive_connections_are_closed_whatever_they_send() -> None:
    async with gateway_over_sim(gen(1), settings=LIMITS) as h:
        reader, writer = await _open(h.url)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length")))  # fmt: skip
        await reader.readexactly(length)
        writer.write(b"\r\n")  # a stray byte: uvicorn's own keep-alive timer stopped here
        assert await asyncio.wait_for(reader.read(), HANG) == b""  # closed, no response
        writer.close()


async def test_connections_beyond_the_limit_get_503_json_and_others_still_work() -> None:
    settings = {"max_connections": 3, "header_timeout_s": 30.0}
    async with gateway_over_sim(gen(1), settings=settings) as h:
        idle = [await _open(h.url) for _ in range(3)]
        reader, writer = await _open(h.url)
        status, err = _status_and_error(await asyncio.wait_for(reader.read(), HANG))
        assert status == 503 and err["code"] == "too_many_connections"
        writer.close()
        for _, w in idle[1:]:
            w.close()
        # With room again, a normal request goes through on the first idle connection.
        r0, w0 = idle[0]
        w0.write(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert (await asyncio.wait_for(r0.read(), HANG)).startswith(b"HTTP/1.1 200")
        w0.close()


async def test_an_oversized_header_gets_431_json() -> None:
    async with gateway_over_sim(gen(1), settings={"max_header_bytes": 4096}) as h:
        reader, writer = await _open(h.url)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 5000 + b"\r\n\r\n")
        status, err = _status_and_error(await asyncio.wait_for(reader.read(), HANG))
        assert status == 431 and err["code"] == "headers_too_large"
        writer.close()


async def test_malformed_requests_are_logged_once_per_kind_not_once_each() -> None:
    import logging

    from sage_cp_plugin.entrypoints.gateway.log_limit import RepeatedLogLimiter

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.WARNING)
    log = logging.getLogger("uvicorn.error")
    async with gateway_over_sim(gen(1)) as h:
        log.addHandler(handler)  # after start-up: uvicorn's Config reconfigures its loggers
        # The server installed one limiter per process; earlier tests' malformed requests
        # were counted by it.
        (limiter,) = [f for f in log.filters if isinstance(f, RepeatedLogLimiter)]
        limiter.forget()
        try:
            for _ in range(20):
                reader, writer = await _open(h.url)
                writer.write(b"\x00\x01 garbage \r\n\r\n")
                status, _ = _status_and_error(await asyncio.wait_for(reader.read(), HANG))
                assert status == 400
                writer.close()
        finally:
            log.removeHandler(handler)
    invalid = [r for r in records if "Invalid HTTP request" in r.getMessage()]
    assert len(invalid) == 1, [r.getMessage() for r in records]


def test_the_limiter_says_how_many_it_held_back() -> None:
    import logging

    from sage_cp_plugin.entrypoints.gateway.log_limit import RepeatedLogLimiter

    limiter = RepeatedLogLimiter(window_s=60)

    def record(at: float, msg: str = "Invalid HTTP request received.") -> logging.LogRecord:
        r = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)
        r.created = at
        return r

    assert limiter.filter(record(0.0))
    assert [limiter.filter(record(t)) for t in (1.0, 2.0, 59.0)] == [False] * 3
    assert limiter.filter(record(1.0, "another kind"))  # kinds are limited separately
    later = record(61.0)
    assert limiter.filter(later)
    assert "[3 more like this in the last 60 s were not logged]" in later.getMessage()
    info = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "x", None, None)
    assert all(limiter.filter(info) for _ in range(5))  # below WARNING: untouched
