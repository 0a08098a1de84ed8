"""The OpenAI-compatible endpoints: completions, chat completions, embeddings, models.

Each handler: key check -> bounded body read -> `RequestMetadata` (the only validation) ->
submit to the coordinator -> await the result (or relay the stream) while watching for the
client going away -> the instance's OpenAI answer, plus `x-sage-*` headers with the
scheduling outcome (request id, instance, attempts, queue/TTFT/E2E milliseconds).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, cast

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from sage_cp_plugin.types import RequestKind, RequestMetadata, RequestPriority, RequestStatus

from .auth import check_client_key
from .body import read_json_object
from .disconnect import ClientDisconnected, DisconnectWatcher
from .errors import GatewayError, error_response, exception_to_error, result_error
from .runtime import Gateway
from .sse import SSERelay
from .translate import to_request

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
CLIENT_CLOSED = 499  # nginx's code: logged and counted, never seen by the departed client


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


async def completions(request: Request) -> Response:
    return await _handle(request, RequestKind.COMPLETION, "/v1/completions")


async def chat_completions(request: Request) -> Response:
    return await _handle(request, RequestKind.CHAT, "/v1/chat/completions")


async def embeddings(request: Request) -> Response:
    return await _handle(request, RequestKind.EMBEDDING, "/v1/embeddings")


async def _handle(request: Request, kind: RequestKind, endpoint: str) -> Response:
    gw = _gateway(request)
    model: Any = None
    priority: RequestPriority | None = None
    status = 500
    streamed = False
    watcher: DisconnectWatcher | None = None
    try:
        check_client_key(request.headers, gw.settings.api_key)
        if gw.shutting_down:
            raise GatewayError(503, "the gateway is shutting down", code="shutting_down")
        body = await read_json_object(request, gw.settings.max_body_bytes)
        model = body.get("model")
        stream_opts = body.get("stream_options")
        if stream_opts is not None and not isinstance(stream_opts, dict):
            raise GatewayError(
                400,
                f"stream_options must be an object such as {{'include_usage': true}}, "
                f"got {type(stream_opts).__name__}",
                param="stream_options",
            )
        base64_out = kind == RequestKind.EMBEDDING and _wants_base64(body)
        req = to_request(body, request.headers, kind, endpoint)
        priority = req.priority
        watcher = DisconnectWatcher(request.receive)
        if req.stream and kind != RequestKind.EMBEDDING:
            include_usage = isinstance(stream_opts, dict) and bool(stream_opts.get("include_usage"))
            response = await _stream(gw, req, watcher, endpoint, include_usage)
            watcher = None  # the relay owns it now, and records the request when it ends
            streamed = True
            return response
        response = await _complete(gw, req, watcher, base64_out)
        status = 200
        return response
    except ClientDisconnected:
        status = CLIENT_CLOSED
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        err = exception_to_error(exc)
        status = err.status
        return error_response(
            err.status, err.message, param=err.param, code=err.code, headers=err.headers
        )
    finally:
        if watcher is not None:
            watcher.close()
        if not streamed:
            gw.metrics.observe_request(endpoint, model, status, priority)


def _client_fault_is_not_instance_fault(gw: Gateway, result: Any, err: GatewayError) -> None:
    """An instance that answered 4xx to a bad request is alive and well.

    The core's passive health check counts every failed attempt against the instance, so a
    few malformed requests (fuzzers, buggy clients) would open the circuit of every instance
    and turn a client's 400 into everyone's 503. Until the dispatcher tells client errors
    apart (see report), record the answer as a success for the instance's health.
    """
    if err.code != "upstream_rejected" or not result.instance_id:
        return
    state = gw.manager.fleet.get(result.instance_id)
    if state is not None:
        gw.manager.health.record_result(state, True, gw.manager.now())


def _wants_base64(body: dict[str, Any]) -> bool:
    """Pop `encoding_format`; True when the client wants base64 vectors.

    The executor reads float lists only (see report), so the instance is always asked for
    floats and base64 (what the `openai` client requests by default) is encoded here.
    """
    fmt = body.pop("encoding_format", None)
    if fmt in (None, "float"):
        return False
    if fmt == "base64":
        return True
    raise GatewayError(
        400,
        f"encoding_format must be 'float' or 'base64', got {fmt!r}",
        param="encoding_format",
        code="invalid_value",
    )


def _to_base64(response: dict[str, Any]) -> dict[str, Any]:
    for item in response.get("data") or []:
        vec = item.get("embedding")
        if isinstance(vec, list):
            item["embedding"] = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
    return response


async def _complete(
    gw: Gateway, req: RequestMetadata, watcher: DisconnectWatcher, base64_out: bool = False
) -> Response:
    manager = gw.manager
    rid = await manager.submit_request(req)
    try:
        result = await watcher.race(manager.wait(rid))
    except ClientDisconnected:
        manager.cancel(rid, "the client disconnected")
        raise
    gw.metrics.observe_result(result)
    if result.state != RequestStatus.COMPLETED:
        err = result_error(result)
        _client_fault_is_not_instance_fault(gw, result, err)
        raise err
    t = result.timings
    headers = {
        "x-sage-request-id": rid,
        "x-sage-instance": result.instance_id or "",
        "x-sage-attempts": str(result.attempts),
        "x-sage-queue-ms": _ms(t.queue_ms),
        "x-sage-ttft-ms": _ms(t.ttft_ms),
        "x-sage-e2e-ms": _ms(t.e2e_ms),
    }
    body = result.response or {}
    if base64_out:
        body = _to_base64(body)
    return Response(_dumps(body), headers=headers, media_type="application/json")


async def _stream(
    gw: Gateway,
    req: RequestMetadata,
    watcher: DisconnectWatcher,
    endpoint: str,
    include_usage: bool,
) -> Response:
    manager = gw.manager
    chunks = cast(AsyncGenerator[dict[str, Any], None], manager.stream(request=req))
    try:
        first = await watcher.race(anext(chunks))
    except BaseException as exc:
        await chunks.aclose()  # runs the stream's cleanup: the request is cancelled upstream
        if isinstance(exc, Exception):
            with contextlib.suppress(KeyError):
                result = await manager.get_request_status(req.request_id)
                _client_fault_is_not_instance_fault(gw, result, exception_to_error(exc))
        raise
    rid = req.request_id

    async def on_end(ok: bool) -> None:
        status = 200 if ok else CLIENT_CLOSED
        gw.metrics.observe_request(endpoint, req.model_name, status, req.priority)
        try:
            gw.metrics.observe_result(await manager.get_request_status(rid))
        except KeyError:
            pass  # already dropped from the bounded result store

    headers = {
        "x-sage-request-id": rid,
        "x-sage-instance": manager.dispatcher.instance_of(rid) or "",
        "cache-control": "no-cache",
    }
    return SSERelay(
        first, chunks, watcher, include_usage=include_usage, headers=headers, on_end=on_end
    )


def _client_key_error(request: Request, gw: Gateway) -> Response | None:
    try:
        check_client_key(request.headers, gw.settings.api_key)
    except GatewayError as err:
        return error_response(err.status, err.message, code=err.code, headers=err.headers)
    return None


async def models(request: Request) -> Response:
    gw = _gateway(request)
    denied = _client_key_error(request, gw)
    if denied is not None:
        return denied
    owners: dict[str, str] = {}
    for s in gw.manager.fleet:
        for name in s.instance.served_models:
            owners.setdefault(name, "embedding" if s.instance.is_embedding else "generation")
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "sage-cp", "kind": kind}
        for name, kind in sorted(owners.items())
    ]
    return Response(_dumps({"object": "list", "data": data}), media_type="application/json")


async def sage_metrics(request: Request) -> Response:
    """The coordinator's own measurements (PerformanceMetrics) as JSON, for remote callers."""
    gw = _gateway(request)
    denied = _client_key_error(request, gw)
    if denied is not None:
        return denied
    return Response(gw.manager.get_metrics().model_dump_json(), media_type="application/json")
