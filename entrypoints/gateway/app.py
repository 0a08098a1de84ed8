"""The gateway's ASGI application: routes, health, Prometheus, OpenAPI, error pages."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from sage_cp_plugin import tracing
from sage_cp_plugin.log_once import OncePerKind
from sage_cp_plugin.tracing.asgi import TracingMiddleware

from .admin import admin_routes
from .autoscaling import autoscaling_routes
from .availability import model_availability
from .errors import error_response
from .experiment import experiment_routes
from .openai_routes import (
    chat_completions,
    completions,
    embeddings,
    model_detail,
    models,
    sage_metrics,
)
from .openapi import build_openapi
from .runtime import Gateway
from .shared import health_fields, prometheus_lines

_crashes = OncePerKind(logging.getLogger(__name__))
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def health(request: Request) -> Response:
    """200 while every model can be served; 200 "degraded" naming the models that cannot;
    503 when none can (or while shutting down). `?model=NAME` asks about one model: 503
    when it cannot be served now, 404 when the fleet does not serve it."""
    gw: Gateway = request.app.state.gateway
    if gw.shutting_down:
        return error_response(503, "the gateway is shutting down", code="shutting_down")
    states = list(gw.manager.fleet)
    models = model_availability(states)
    wanted = request.query_params.get("model")
    if wanted is not None:
        entry = models.get(wanted)
        if entry is None:
            return error_response(
                404, f"no instance serves model {wanted!r}", param="model", code="model_not_found"
            )
        if not entry.available:
            return error_response(
                503,
                f"model {wanted!r} cannot be served now ({entry.reason(states)})",
                param="model",
                code="model_unavailable",
            )
    healthy = [s.instance_id for s in states if s.routable]
    if not healthy:
        why = ", ".join(
            f"{s.instance_id}: {'draining' if s.draining else 'circuit open' if s.circuit_open else 'unhealthy'}"
            for s in states
        )
        return error_response(
            503,
            f"no healthy instance ({why or 'no instances registered'})",
            code="no_healthy_instance",
        )
    unavailable = [m for m in models.values() if not m.available]
    body = {
        "status": "degraded" if unavailable else "ok",
        "healthy_instances": len(healthy),
        "instances": len(states),
        "models": {m.name: m.available for m in models.values()},
        "unavailable_models": {m.name: m.reason(states) for m in unavailable},
        **health_fields(gw),
        **({"workers": gw.workers.describe()} if gw.workers is not None else {}),
    }
    return Response(json.dumps(body), media_type="application/json")


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    workers = gw.workers.prometheus() if gw.workers is not None else b""
    body = gw.metrics.render() + prometheus_lines(gw) + workers
    return Response(body, media_type=PROMETHEUS_CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    # Built per call: the fleet (and so the model enum) changes through the admin API.
    gw: Gateway = request.app.state.gateway
    gen: set[str] = set()
    emb: set[str] = set()
    for s in gw.manager.fleet:
        (emb if s.instance.is_embedding else gen).update(s.instance.served_models)
    spec = build_openapi(sorted(gen), sorted(emb))
    return Response(json.dumps(spec), media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    msg = {
        404: f"no route {request.url.path}",
        405: f"method {request.method} not allowed on {request.url.path}",
    }
    return error_response(
        exc.status_code, msg.get(exc.status_code, exc.detail), headers=dict(exc.headers) if exc.headers else None
    )  # fmt: skip


async def _server_error(request: Request, exc: Exception) -> Response:
    _crashes.exception(exc, "unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", code="internal")


class GatewayApp:
    """The gateway's ASGI entry: POSTs to the generation endpoints go straight to their
    handlers, everything else through Starlette's routing and middleware.

    Those handlers answer every failure themselves (`openai_routes._handle`), so Starlette's
    layers (its error and exception middleware, the router's scan, the endpoint wrapper:
    a function call per layer on every request and every streamed `send`) had nothing to do
    for them. A crash past a handler is still logged and answered 500, as Starlette does;
    with tracing on, the fast path runs inside the same `TracingMiddleware`."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state
        fast: Any = self._generate
        self._fast: Any = TracingMiddleware(fast) if tracing.enabled() else fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GENERATION:
            await self._fast(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app  # `request.app.state.gateway`, as under Starlette
        request = Request(scope, receive)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            response = await GENERATION[scope["path"]](request)
            await response(scope, receive, sending)
        except Exception as exc:
            failure = await _server_error(request, exc)
            if not started:
                await failure(scope, receive, send)


GENERATION = {
    "/v1/completions": completions,
    "/v1/chat/completions": chat_completions,
    "/v1/embeddings": embeddings,
}


def create_app(gateway: Gateway) -> GatewayApp:
    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model_detail, methods=["GET"]),
        Route("/v1/sage/metrics", sage_metrics, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *admin_routes(),
        *experiment_routes(),
        *autoscaling_routes(),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    if tracing.enabled():  # a SERVER span per request (docs/tracing.md); off: not mounted
        app.add_middleware(TracingMiddleware)
    app.state.gateway = gateway
    return GatewayApp(app)
