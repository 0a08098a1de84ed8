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


def error_fields() -> dict[str, str]:
    """What an error body adds so a user can go from a 5xx to its trace: the trace id and
    the caller's `x-request-id` (empty when tracing is off)."""
    trace_id = current_trace_id()
    if trace_id is None:
        return {}
    fields = {"trace_id": trace_id}
    rid = state.REQUEST_ID.get()
    if rid is not None:
        fields["request_id"] = rid
    return fields


_factory_installed = False


def install_record_factory() -> None:
    """Every log record made while a span is current carries `trace_id` and `span_id`
    (usable in formats as %(trace_id)s; "-" outside a trace). Installed once, when
    tracing is configured; records made without tracing are left untouched."""
    global _factory_installed
    if _factory_installed:
        return
    _factory_installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        trace_id = current_trace_id()
        record.trace_id = trace_id or "-"
        return record

    logging.setLogRecordFactory(factory)
