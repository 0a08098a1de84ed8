"""Trace ids in log records and error bodies."""

from __future__ import annotations

import logging

from sage_cp_plugin.tracing import state


def current_trace_id() -> str | None:
    """The 32-hex trace id of the active span; None when tracing is off or nothing is traced."""
    if state.TRACER is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class TraceIdFilter(logging.Filter):
    """Adds `trace_id` (or "-") to every record, for formats like `%(trace_id)s`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id() or "-"
        return True
