"""Connection limits uvicorn does not enforce, on top of its httptools protocol.

uvicorn (0.54) has no header-read or body-read timeout, no header size limit with httptools,
arms its keep-alive timer only after a first response and cancels it on any byte, and
answers its own parse errors in plain text. Measured before this module: 0 of 1,300
slow-header, slow-body or idle connections were ever closed, and a 32 MB header was
accepted. Each limit here is one deadline or one counter on uvicorn's own protocol class (no
task and no timer per connection: the deadlines of one server share one timer, see
deadlines.py, so arming a limit on the request path is an append to a queue, not a timer
created and cancelled three times per request, and a connection is closed at its deadline):

- a connection must deliver a request's headers within `header_timeout_s` of opening (or of
  the request's first byte after an idle keep-alive pause); dribbling bytes does not help;
- after the headers, the body must be complete within `body_timeout_s`;
- an idle keep-alive connection is closed after `keep_alive_s`, whatever it sends that is
  not a request;
- request line plus headers above `max_header_bytes` get 431;
- beyond `max_connections` open connections, a new one gets 503 and is closed;
- the application is started for a request once its body has arrived (or once a flow-
  control window of it, uvicorn's HIGH_WATER_LIMIT, waits to be read), not at its headers:
  every route reads the whole body before it does anything, so a task, the middleware
  stack and the route's setup for a body still on its way are work spent early, and for a
  body that never comes (a slow or idle client) work spent twice, at the headers and again
  unwinding a cancelled request at its deadline (~170-300 us of loop CPU per such
  connection at its headers with a trivial app, micro-benchmark on the loaded machine);
- every error written here is an OpenAI-format JSON body, like the application's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .deadlines import LATENESS, Deadlines, Entry
from .errors import error_body

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}  # fmt: skip


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_connections: int = 4096


class _HeadersTooLarge(Exception):
    pass


def http_error(status: int, message: str, code: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = json.dumps(error_body(status, message, code=code)).encode()
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    return b"".join([*head, b"\r\n", body])


_cached_http_error = functools.lru_cache(maxsize=64)(http_error)


def _nothing() -> None:
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # Connections closed by each limit (read by tests and the benchmark).
    closed: ClassVar[dict[str, int]] = {}
    _deadlines: ClassVar[Deadlines | None] = None  # one per server (guarded_protocol's class)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: Entry | None = None  # [loop time, self] while a phase is timed
        self._header_bytes = 0
        self._rejection: tuple[int, str, str] | None = None
        self._phase = "connect"  # connect | headers | body | app | idle
        self._waiting_body: tuple[RequestResponseCycle, Any] | None = None  # app not started

    # -- deadlines ---------------------------------------------------------------------------
    def _arm(self, seconds: float, phase: str) -> None:
        self._phase = phase
        deadlines = self._deadlines_of_server()
        if self._deadline is not None:
            deadlines.cancel(self._deadline)
        self._deadline = deadlines.arm(self, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadlines_of_server().cancel(self._deadline)
            self._deadline = None

    @property
    def deadline_at(self) -> float:
        """Loop time past which the current phase has failed (inf when none is timed)."""
        d = self._deadline
        return d[0] if d is not None and d[1] is not None else math.inf

    def _deadlines_of_server(self) -> Deadlines:
        cls = type(self)
        if cls._deadlines is None or cls._deadlines.loop is not self.loop:
            cls._deadlines = Deadlines(self.loop)
        return cls._deadlines

    def expire(self) -> None:
        """Called by the server's Deadlines at the deadline of the current phase."""
        phase = self._phase
        self._disarm()
        if self.transport.is_closing():
            return
        kind = {"connect": "header", "headers": "header", "body": "body", "idle": "idle"}[phase]
        self.closed[kind] = self.closed.get(kind, 0) + 1
        lim = self.limits
        if phase in ("connect", "headers"):
            self._write_error(
                408,
                f"request headers not received within {lim.header_timeout_s:g} s",
                "header_timeout",
            )
        elif phase == "body" and (self.cycle is None or not self.cycle.response_started):
            self._write_error(
                408, f"request body not received within {lim.body_timeout_s:g} s", "body_timeout"
            )
        self.transport.close()  # idle keep-alive: closed without a response, as is usual

    def _write_error(
        self, status: int, message: str, code: str, retry_after: int | None = None
    ) -> None:
        # The same few answers each time (the limits are fixed; no request's trace context
        # reaches the protocol's callbacks): encoded once.
        self.transport.write(_cached_http_error(status, message, code, retry_after))
        self.transport.close()

    # -- connection --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.closed["max_connections"] = self.closed.get("max_connections", 0) + 1
            self._write_error(
                503,
                f"too many open connections (limit {self.limits.max_connections}); retry later",
                "too_many_connections",
                retry_after=1,
            )
            return
        self._arm(self.limits.header_timeout_s, "connect")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        waiting, self._waiting_body = self._waiting_body, None
        if waiting is not None:
            # Its app never ran, so nothing told; but uvicorn breaks the cycle <-> protocol
            # reference cycle at the end of the app (run_asgi): without this, every slow
            # body's connection would wait for a full garbage collection to be freed.
            waiting[0].on_response = _nothing
        super().connection_lost(exc)

    # -- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._phase != "connect":  # a new request on a kept-alive connection
            self._arm(self.limits.header_timeout_s, "headers")

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._rejection = (
                431,
                f"request line and headers exceed {self.limits.max_header_bytes} bytes",
                "headers_too_large",
            )
            raise _HeadersTooLarge  # httptools stops parsing; send_400_response answers

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._arm(self.limits.body_timeout_s, "body")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        waiting = self._waiting_body
        if waiting is not None and len(waiting[0].body) > HIGH_WATER_LIMIT:
            self._start_waiting_app()  # reading is paused: the app must drain the body

    def on_message_complete(self) -> None:
        self._disarm()
        self._phase = "app"  # the application bounds its own work (request timeouts)
        super().on_message_complete()
        if self._waiting_body is not None:
            self._start_waiting_app()

    # -- the application starts once the body is here ------------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if cycle.more_body and not cycle.waiting_for_100_continue:
            # The body is still to come (a request without one completes in the same
            # parse, right after its headers). A client expecting 100-continue sends it
            # only once the app reads, so that one starts now.
            self._waiting_body = (cycle, app)
            return
        super()._start_asgi_task(cycle, app)

    def _start_waiting_app(self) -> None:
        waiting, self._waiting_body = self._waiting_body, None
        if waiting is not None and not self.transport.is_closing():
            super()._start_asgi_task(*waiting)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn armed its keep-alive timer only if no pipelined request is waiting; ours
        # is not cancelled by stray bytes, only by a request's headers arriving in time.
        if self.timeout_keep_alive_task is not None and not self.transport.is_closing():
            self._arm(self.limits.keep_alive_s, "idle")

    def send_400_response(self, msg: str) -> None:
        status, message, code = self._rejection or (
            400,
            "malformed HTTP request (the request line or headers could not be parsed)",
            "bad_http_request",
        )
        self._rejection = None
        self._disarm()
        self._write_error(status, message, code)


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these limits."""
    attrs = {"limits": limits, "_deadlines": None}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)


class ConnectionsCollector(Collector):
    """Connections closed by each limit and how late their deadlines ran, at scrape time
    (process-wide: with `--workers N` each worker keeps its own and these are the
    scheduling process's)."""

    def collect(self) -> Iterator[Metric]:
        closed = CounterMetricFamily(
            "sage_cp_connections_closed",
            "Connections the gateway closed for a limit (header, body, idle, max_connections)",
            labels=["limit"],
        )
        for limit, n in sorted(GuardedHttpToolsProtocol.closed.items()):
            closed.add_metric([limit], n)
        yield closed
        late = LATENESS
        yield CounterMetricFamily(
            "sage_cp_connection_deadline_lateness_seconds",
            "Sum over expired connection deadlines of (expired at - deadline)",
            late.sum_s,
        )
        yield CounterMetricFamily(
            "sage_cp_connection_deadlines_expired", "Connection deadlines expired", late.count
        )
        yield GaugeMetricFamily(
            "sage_cp_connection_deadline_lateness_max_seconds",
            "Largest (expired at - deadline) of a connection deadline since start",
            value=late.max_s,
        )
