"""The process's tracing state. None = tracing off: hooks test this and return."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

TRACER: Any = None  # opentelemetry.trace.Tracer of the control plane (gateway, manager)
ENGINE_TRACER: Any = None  # the simulator's own tracer (its `llm_request` spans)
CAPTURE_CONTENT = False  # prompts and outputs on spans: explicit opt-in only
EXCLUDED_PATHS: frozenset[str] = frozenset()
PROVIDERS: list[Any] = []  # TracerProviders we built, flushed and shut down by `shutdown`
# The caller's x-request-id of the gateway request being served (set by the middleware).
REQUEST_ID: ContextVar[str | None] = ContextVar("sage_cp_request_id", default=None)
# Inside an unsampled request's attempt task: the `traceparent` (flags 00) to send on.
UNSAMPLED_TRACEPARENT: ContextVar[str | None] = ContextVar(
    "sage_cp_unsampled_traceparent", default=None
)
