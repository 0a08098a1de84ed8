"""`RequestBatcher` and `BatchFlatMap`: group a stream into batches, and run a batch.

SAGE has no window operator and no end-of-stream signal (docs/architecture.md §7), so the batcher is
a stateful flat-map that flushes on size, on age (checked when an item or a `Heartbeat`
arrives), and on the source's `EndOfStream`. On SAGE's fast path it is called from 8
threads at once: every state change happens under one lock, so no item is lost or
duplicated, and the end marker counts items so an overtaken marker waits for the rest.
Flat-maps here return lists instead of using `collect()`, because SAGE shares one
collector slot per function between concurrent calls.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sage.foundation import FlatMapFunction

from sage_cp_plugin.types import RequestKind

from .base import ServiceBound
from .markers import EndOfStream, Heartbeat, is_marker
from .registration import DEFAULT_SERVICE_NAME


@dataclass
class RequestBatch:
    """Items to dispatch together. Not iterable on purpose: SAGE would flatten it."""

    seq: int
    items: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


class RequestBatcher(FlatMapFunction):  # type: ignore[misc]
    """item -> [] or [RequestBatch...]; `batch_size` and/or `max_wait_s` (a time window)."""

    def __init__(
        self, batch_size: int = 32, max_wait_s: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_wait_s is not None and max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be positive, got {max_wait_s}")
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._buffer: list[Any] = []
        self._first_at = 0.0
        self._seq = 0
        self._received = 0
        self._expected: int | None = None
        self._ended = False

    def execute(self, data: Any) -> list[Any]:
        if getattr(self.ctx, "parallelism", 1) > 1:
            # SAGE gives the end marker to one replica: the others would keep their items.
            raise ValueError("RequestBatcher must run with parallelism=1 (it is cheap)")
        with self._lock:
            out: list[Any] = []
            if isinstance(data, EndOfStream):
                self._expected = data.count if data.count is not None else self._received
            elif isinstance(data, Heartbeat):
                if self._window_expired():
                    self._flush(out)
                return out
            else:
                self._received += 1
                if not self._buffer:
                    self._first_at = time.monotonic()
                self._buffer.append(data)
                if len(self._buffer) >= self.batch_size or self._window_expired():
                    self._flush(out)
            if self._expected is not None and not self._ended and self._received >= self._expected:
                self._flush(out)
                self._ended = True
                out.append(EndOfStream(self._seq))
            return out

    def _window_expired(self) -> bool:
        return (
            self.max_wait_s is not None
            and bool(self._buffer)
            and time.monotonic() - self._first_at >= self.max_wait_s
        )

    def _flush(self, out: list[Any]) -> None:
        if self._buffer:
            self._seq += 1
            out.append(RequestBatch(self._seq, self._buffer))
            self._buffer = []


class BatchFlatMap(FlatMapFunction, ServiceBound):  # type: ignore[misc]
    """RequestBatch -> one ResultRecord per item (the flat-map variant of `BatchMap`)."""

    def __init__(
        self,
        service_name: str = DEFAULT_SERVICE_NAME,
        kind: RequestKind | str | None = None,
        model: str | None = None,
        defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._bind(service_name, kind, model, defaults)

    def execute(self, data: Any) -> list[Any]:
        if is_marker(data):
            return [data]
        items = data.items if isinstance(data, RequestBatch) else [data]
        return list(self.service.run_batch(items, **self._options()))
