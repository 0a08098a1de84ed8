"""`ConcurrentFlatMap`: keep up to N requests in flight across calls; emit records as they finish.

A batch waits for its slowest request before the next batch starts; this operator does
not. Each call starts its item's request and returns every record finished so far, waiting
only while the window is full. On `EndOfStream` it waits for the rest and forwards the
marker, so nothing is left behind. Records come out in completion order (each carries its
`custom_id`). Thread-safe: the window is shared state guarded by one condition.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from typing import Any

from sage.foundation import FlatMapFunction

from sage_cp_plugin.types import RequestKind

from .base import ServiceBound
from .markers import EndOfStream, Heartbeat
from .records import ResultRecord
from .registration import DEFAULT_SERVICE_NAME


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
        self._cond = threading.Condition()
        self._done: deque[ResultRecord] = deque()
        self._in_flight = 0
        self._received = 0
        self._emitted = 0
        self._expected: int | None = None
        self._ended = False

    def execute(self, data: Any) -> list[Any]:
        if isinstance(data, EndOfStream):
            with self._cond:
                self._expected = data.count if data.count is not None else self._received
            return self._take(drain_if_ended=True)
        if isinstance(data, Heartbeat):
            return self._take()
        with self._cond:
            # Wait for room before starting: the window bounds memory and upstream load.
            while self._in_flight >= self.max_in_flight:
                self._cond.wait()
            self._in_flight += 1
            self._received += 1
        try:
            future = self.service.submit(data, **self._options())
        except BaseException:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()
            raise
        future.add_done_callback(self._finished)
        return self._take(drain_if_ended=True)

    def _finished(self, future: concurrent.futures.Future[ResultRecord]) -> None:
        try:
            record = future.result()
        except BaseException as exc:  # cancelled when the service closed mid-request
            record = ResultRecord.failure(
                "unknown", "cancelled", f"request abandoned: {exc!r}", status_code=499
            )
        with self._cond:
            self._done.append(record)
            self._in_flight -= 1
            self._cond.notify_all()

    def _take(self, drain_if_ended: bool = False) -> list[Any]:
        with self._cond:
            end = (
                drain_if_ended
                and not self._ended
                and self._expected is not None
                and self._received >= self._expected
            )
            if end:
                while self._in_flight > 0:
                    self._cond.wait()
                self._ended = True
            out: list[Any] = list(self._done)
            self._done.clear()
            self._emitted += len(out)
            if end:
                out.append(EndOfStream(self._emitted))
            return out
