"""ASGI middleware: one SERVER span per gateway request, continuing the caller's trace
(W3C `traceparent`/`tracestate`), except on the excluded paths (/health, /metrics)."""

from __future__ import annotations

from typing import Any

from sage_cp_plugin.tracing import state

Scope = dict[str, Any]


class TracingMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        tracer = state.TRACER
        if tracer is None or scope["type"] != "http" or scope["path"] in state.EXCLUDED_PATHS:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(carrier)
        method, path = scope["method"], scope["path"]
        span = tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        status: list[int] = []

        async def send_traced(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        rid = carrier.get("x-request-id")
        if rid:
            span.set_attribute("sage_cp.x_request_id", rid)
        token = context.attach(trace.set_span_in_context(span, parent))
        rid_token = state.REQUEST_ID.set(rid)
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
