"""`ConcurrentFlatMap`: keep up to N requests in flight across calls; emit records as they finish.

A batch waits for its slowest request before the next batch starts; this operator does
not. Each call starts its item's request and returns every record finished so far, waiting
only while its window is full. On `EndOfStream` it waits for the rest and forwards the
marker. Records come out in completion order (each carries its `custom_id`).

With `parallelism=N`, SAGE hands the end marker to one replica only, so the replicas share
one `_WindowGroup` (kept by the job's service): each replica bounds its own in-flight
requests, and whichever replica gets the marker drains and emits everyone's results.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
from collections import deque
from typing import Any

from sage.foundation import FlatMapFunction

from sage_cp_plugin.types import RequestKind

from .base import ServiceBound
from .markers import EndOfStream, Heartbeat
from .records import ResultRecord
from .registration import DEFAULT_SERVICE_NAME

_REPLICA_SUFFIX = re.compile(r"_r\d+$")


class _WindowGroup:
    """State shared by the replicas of one ConcurrentFlatMap; guarded by one condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.done: deque[ResultRecord] = deque()
        self.in_flight: dict[int, int] = {}
        self.received = 0
        self.emitted = 0
        self.expected: int | None = None
        self.ended = False

    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())


class ConcurrentFlatMap(FlatMapFunction, ServiceBound):  # type: ignore[misc]
    def __init__(
        self,
        service_name: str = DEFAULT_SERVICE_NAME,
        max_in_flight: int = 64,
        kind: RequestKind | str | None = None,
        model: str | None = None,
        defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._bind(service_name, kind, model, defaults)
        self.max_in_flight = max_in_flight
        self._group: _WindowGroup | None = None

    @property
    def group(self) -> _WindowGroup:
        if self._group is None:
            name = _REPLICA_SUFFIX.sub("", str(getattr(self.ctx, "name", "")))
            self._group = self.service.shared(f"window:{name}:{id(type(self))}", _WindowGroup)
        return self._group

    def execute(self, data: Any) -> list[Any]:
        g = self.group
        me = id(self)
        if isinstance(data, EndOfStream):
            with g.cond:
                g.expected = data.count if data.count is not None else g.received
            return self._take(g)
        if isinstance(data, Heartbeat):
            return self._take(g)
        with g.cond:
            # Wait for room before starting: the window bounds memory and upstream load.
            while g.in_flight.get(me, 0) >= self.max_in_flight:
                g.cond.wait()
            g.in_flight[me] = g.in_flight.get(me, 0) + 1
            g.received += 1
        try:
            future = self.service.submit(data, **self._options())
        except BaseException:
            self._finished_one(g, me, None)
            raise
        future.add_done_callback(lambda f: self._finished_one(g, me, f))
        return self._take(g)

    @staticmethod
    def _finished_one(
        g: _WindowGroup, me: int, future: concurrent.futures.Future[ResultRecord] | None
    ) -> None:
        record = None
        if future is not None:
            try:
                record = future.result()
            except BaseException as exc:  # the service settles its futures; be safe anyway
                record = ResultRecord.failure(
                    "unknown", "cancelled", f"request abandoned: {exc!r}", status_code=499
                )
        with g.cond:
            if record is not None:
                g.done.append(record)
            g.in_flight[me] -= 1
            g.cond.notify_all()

    @staticmethod
    def _take(g: _WindowGroup) -> list[Any]:
        with g.cond:
            end = not g.ended and g.expected is not None and g.received >= g.expected
            if end:
                while g.total_in_flight() > 0:
                    g.cond.wait()
                g.ended = True
            out: list[Any] = list(g.done)
            g.done.clear()
            g.emitted += len(out)
            if end:
                out.append(EndOfStream(g.emitted))
            return out
