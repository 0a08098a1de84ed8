"""Map operators: one item -> one `ResultRecord`, or one batch -> its records.

A map call blocks its SAGE stage until the answer is back, so a per-item map runs one
request at a time; for throughput put `RequestBatcher` in front of `BatchMap` /
`BatchFlatMap`, or use `ConcurrentFlatMap`, which keeps a window of requests in flight.
Markers (`EndOfStream`, `Heartbeat`) pass through unchanged.
"""

from __future__ import annotations

from typing import Any

from sage.foundation import MapFunction

from sage_cp_plugin.types import RequestKind

from .base import ServiceBound
from .batcher import RequestBatch
from .markers import is_marker
from .records import ResultRecord
from .registration import DEFAULT_SERVICE_NAME


class ControlPlaneMap(MapFunction, ServiceBound):  # type: ignore[misc]
    """item -> ResultRecord. `kind` is the endpoint for items that do not name one."""

    default_kind: RequestKind | None = None

    def __init__(
        self,
        service_name: str = DEFAULT_SERVICE_NAME,
        kind: RequestKind | str | None = None,
        model: str | None = None,
        defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._bind(service_name, kind or self.default_kind, model, defaults)

    def execute(self, data: Any) -> Any:
        if is_marker(data):
            return data
        return self.service.run(data, **self._options())


class ChatMap(ControlPlaneMap):
    """Chat completions (`/v1/chat/completions`); a string becomes one user message."""

    default_kind = RequestKind.CHAT


class CompletionMap(ControlPlaneMap):
    """Text completions (`/v1/completions`); a string is the prompt."""

    default_kind = RequestKind.COMPLETION


class EmbeddingMap(ControlPlaneMap):
    """Embeddings (`/v1/embeddings`); a string or a list of strings is the input."""

    default_kind = RequestKind.EMBEDDING

    def execute(self, data: Any) -> Any:
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            data = {"input": data}
        return super().execute(data)


class BatchMap(ControlPlaneMap):
    """RequestBatch (or list) -> list[ResultRecord], in the batch's order, run concurrently."""

    def execute(self, data: Any) -> Any:
        if is_marker(data):
            return data
        items = data.items if isinstance(data, RequestBatch) else list(data)
        records: list[ResultRecord] = self.service.run_batch(items, **self._options())
        return records
