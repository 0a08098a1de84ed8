"""Request tracing with OpenTelemetry (docs/tracing.md).

Off by default. Then `state.TRACER` is None, every hook returns at its first line and
OpenTelemetry is never imported. On (`configure`), the control plane gets its own
TracerProvider (the process-global one is left alone unless `set_global=True`).
"""

from __future__ import annotations

from sage_cp_plugin.tracing.config import TracingConfig
from sage_cp_plugin.tracing.logs import TraceIdFilter, current_trace_id
from sage_cp_plugin.tracing.provider import (
    configure,
    configure_engine,
    enabled,
    shutdown,
    validate,
)
from sage_cp_plugin.tracing.spans import (
    attempt_headers,
    end_attempt,
    on_admit,
    on_dispatch,
    on_result,
    start_attempt,
    task_context,
)

__all__ = [
    "TraceIdFilter",
    "TracingConfig",
    "attempt_headers",
    "configure",
    "configure_engine",
    "current_trace_id",
    "enabled",
    "end_attempt",
    "on_admit",
    "on_dispatch",
    "on_result",
    "shutdown",
    "start_attempt",
    "task_context",
    "validate",
]
