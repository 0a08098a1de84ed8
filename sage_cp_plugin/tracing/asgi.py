"""ASGI middleware: one SERVER span per gateway request, continuing the caller's trace
(W3C `traceparent`/`tracestate`), except on the excluded paths (/health, /metrics).

A request the sampler drops gets no span: only the (unsampled) context is made current,
so the control plane and the engine see the decision and record nothing."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sage_cp_plugin.tracing import state

Scope = dict[str, Any]
# The headers the W3C propagators read (trace context and baggage).
_PROPAGATED = frozenset((b"traceparent", b"tracestate", b"baggage"))


class TracingMiddleware:
    """`only`: trace just these paths (a `--workers` worker traces the requests it serves
    itself; the ones it proxies are traced by the scheduling process's app)."""

    def __init__(self, app: Any, only: Collection[str] | None = None) -> None:
        self.app = app
        self.only = frozenset(only) if only is not None else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        tracer = state.TRACER
        if (
            tracer is None
            or scope["type"] != "http"
            or scope["path"] in state.EXCLUDED_PATHS
            or (self.only is not None and scope["path"] not in self.only)
        ):
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier: dict[str, str] = {}
        rid: str | None = None
        for k, v in scope["headers"]:
            if k in _PROPAGATED:
                carrier[k.decode("latin-1")] = v.decode("latin-1")
            elif k == b"x-request-id":
                rid = v.decode("latin-1")
        parent = propagate.extract(carrier) if carrier else context.Context()
        method, path = scope["method"], scope["path"]
        span = tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER)
        token = context.attach(trace.set_span_in_context(span, parent))
        rid_token = state.REQUEST_ID.set(rid)
        if not span.is_recording():  # unsampled: the context travels, nothing is recorded
            try:
                await self.app(scope, receive, send)
            finally:
                state.REQUEST_ID.reset(rid_token)
                context.detach(token)
            return
        span.set_attributes({"http.request.method": method, "url.path": path})
        if rid:
            span.set_attribute("sage_cp.x_request_id", rid)
        status: list[int] = []

        async def send_traced(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            state.REQUEST_ID.reset(rid_token)
            context.detach(token)
            if status:
                span.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
