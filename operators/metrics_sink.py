"""`MetricsSink`: the end of a pipeline that only measures (counts, latency, SLO attainment).

It summarises the records it receives; at `EndOfStream` (or SAGE's `close()`) it adds the
coordinator's own metrics, then hands the summary to `on_summary` and logs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sage.foundation import SinkFunction

from .markers import EndOfStream
from .records import ResultRecord
from .registration import DEFAULT_SERVICE_NAME
from .stats import RecordStats, format_summary


class MetricsSink(SinkFunction):  # type: ignore[misc]
    def __init__(
        self,
        on_summary: Callable[[dict[str, Any]], None] | None = None,
        service_name: str | None = DEFAULT_SERVICE_NAME,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.on_summary = on_summary
        self.service_name = service_name
        self.stats = RecordStats()
        self.summary: dict[str, Any] | None = None

    def execute(self, data: Any) -> None:
        if isinstance(data, EndOfStream):
            self._finish()
            return
        records = data if isinstance(data, list) else [data]
        for record in records:
            if isinstance(record, ResultRecord):
                self.stats.add(record)

    def _finish(self) -> None:
        if self.summary is not None:
            return
        self.stats.stop()
        summary = self.stats.summary()
        summary["coordinator"] = self._coordinator_metrics()
        self.summary = summary
        self.logger.info("pipeline summary:\n%s", format_summary(summary))
        if self.on_summary is not None:
            self.on_summary(summary)

    def _coordinator_metrics(self) -> dict[str, Any]:
        get = getattr(self.ctx, "get_service", None)
        if self.service_name is None or get is None:
            return {}
        try:
            metrics: dict[str, Any] = get(self.service_name).metrics()
            return metrics
        except Exception as exc:  # measuring must never fail the job
            return {"error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        self._finish()
