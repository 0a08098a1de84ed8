"""The OpenAI-compatible endpoints: completions, chat completions, embeddings, models.

Each handler: key check -> bounded body read -> full validation of the body (schemas.py)
and of the scheduling fields (`RequestMetadata`) -> submit to the coordinator -> await the
result (or relay the stream) while watching for the client going away -> the instance's
OpenAI answer, plus `x-sage-*` headers with the scheduling outcome (request id, instance,
attempts, queue/TTFT/E2E milliseconds).

`x-request-id` is idempotent: a request resent with the id of one that is still in flight
joins it, and one whose result is still retained gets that result, instead of running twice
(clients and proxies resend the same id on retry). Long embedding lists are split into
parts run concurrently across the embedding instances (see embeddings.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, cast

import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from sage_cp_plugin.errors import RequestIdInUseError
from sage_cp_plugin.types import RequestKind, RequestMetadata, RequestPriority, RequestStatus

from .auth import check_client_key
from .availability import ModelAvailability, model_availability
from .body import read_json_object
from .disconnect import ClientDisconnected, DisconnectWatcher
from .embeddings import complete_split_embedding, needs_split
from .errors import GatewayError, error_response, exception_to_error, result_error
from .handover import claimed_elsewhere
from .inflight import Reservation
from .runtime import Gateway
from .schemas import check_embedding_size, too_many_inputs, validate_body
from .sse import SSERelay, replay_as_sse
from .translate import to_request

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
CLIENT_CLOSED = 499  # nginx's code: logged and counted, never seen by the departed client


def failure_response(exc: Exception) -> tuple[int, Response]:
    """The status (for logs and metrics) and the answer for a request that raised `exc`: a
    departed client gets CLIENT_CLOSED, anything else its OpenAI-style error body."""
    if isinstance(exc, ClientDisconnected | ClientDisconnect):
        return CLIENT_CLOSED, Response(status_code=CLIENT_CLOSED)
    err = exception_to_error(exc)
    return err.status, error_response(
        err.status, err.message, param=err.param, code=err.code, headers=err.headers
    )


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
    held: Reservation | None = None
    try:
        check_client_key(request.headers, gw.settings.api_key)
        if gw.shutting_down:
            raise GatewayError(503, "the gateway is shutting down", code="shutting_down")
        held = gw.inflight.reserve(_declared_size(request, gw.settings.max_body_bytes))
        body = await _read_body(request, gw, kind)
        model = body.get("model")
        if kind == RequestKind.EMBEDDING:
            s = gw.settings
            check_embedding_size(body, s.max_embedding_inputs, s.max_embedding_chars)
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            held.grow(gw.inflight.embedding_answer_bytes(model, count))
        validate_body(kind, body)
        handed = await claimed_elsewhere(gw, request, body)
        if handed is not None:  # a live peer runs this id: its answer
            status = handed.status_code
            return handed
        include_usage = wants_usage(body)
        base64_out = kind == RequestKind.EMBEDDING and _wants_base64(body)
        req = gw.experiment.tag(to_request(body, request.headers, kind, endpoint))
        priority = req.priority
        watcher = w = DisconnectWatcher(request.receive)
        if req.stream and kind != RequestKind.EMBEDDING:
            try:
                if not await gw.knows(req.request_id):
                    response = await _stream(gw, req, w, endpoint, include_usage)
                    watcher = None  # the relay owns it now, and records the request at its end
                    streamed = True
                    return response
            except RequestIdInUseError:
                pass  # the same id arrived meanwhile (a resend, a peer's handover): the stream
                # admits on its first read, a loop turn after `knows`. Join that run.
            response = await _rejoin_stream(gw, req, w, include_usage)
            status = 200
            return response
        if kind == RequestKind.EMBEDDING and needs_split(gw, req):
            response = await complete_split_embedding(gw, req, watcher, base64_out, held)
            held = None  # the streamed answer releases it when it ends
        else:
            response = await _complete(gw, req, watcher, base64_out)
        status = 200
        return response
    except Exception as exc:
        status, response = failure_response(exc)
        return response
    finally:
        if held is not None:
            held.release()
        if watcher is not None:
            watcher.close()
        if not streamed:
            gw.metrics.observe_request(endpoint, model, status, priority)


async def _read_body(request: Request, gw: Gateway, kind: RequestKind) -> dict[str, Any]:
    if kind != RequestKind.EMBEDDING:
        return await read_json_object(request, gw.settings.max_body_bytes)
    most = gw.settings.max_embedding_inputs
    return await read_json_object(
        request,
        gw.settings.max_body_bytes,
        item_limits={"input": most},
        too_many=lambda _: too_many_inputs(f"more than {most} items", most),
    )


def _declared_size(request: Request, max_bytes: int) -> int:
    """The body size the client announced (what reading it will hold), 0 if none or bad
    (read_body refuses a bad Content-Length; a chunked body is bounded by max_bytes)."""
    try:
        return min(max(int(request.headers.get("content-length") or 0), 0), max_bytes)
    except ValueError:
        return 0


def wants_usage(body: dict[str, Any]) -> bool:
    """`stream_options.include_usage`; a `stream_options` that is not an object is a 400."""
    stream_opts = body.get("stream_options")
    if stream_opts is not None and not isinstance(stream_opts, dict):
        raise GatewayError(
            400,
            f"stream_options must be an object such as {{'include_usage': true}}, "
            f"got {type(stream_opts).__name__}",
            param="stream_options",
        )
    return isinstance(stream_opts, dict) and bool(stream_opts.get("include_usage"))


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
    """A copy with base64 vectors; the retained result keeps its float lists."""
    data = []
    for item in response.get("data") or []:
        vec = item.get("embedding")
        if isinstance(vec, list):
            raw = np.asarray(vec, dtype="<f4").tobytes()
            item = {**item, "embedding": base64.b64encode(raw).decode()}
        data.append(item)
    return {**response, "data": data}


async def _complete(
    gw: Gateway, req: RequestMetadata, watcher: DisconnectWatcher, base64_out: bool = False
) -> Response:
    manager = gw.manager
    rejoined = await gw.knows(req.request_id)
    rid = req.request_id if rejoined else await manager.submit_request(req)
    gw.wait_on(rid)
    gone = False
    try:
        result = await watcher.race(manager.results.future(rid))
    except ClientDisconnected:
        gone = True
        # Only when no other client waits for it (a resend, a peer's handover): the first
        # caller leaving must not fail the others. A resend that leaves never cancels (the
        # first caller, streaming or not, may still be reading).
        if gw.stop_waiting(rid) == 0 and not rejoined:
            manager.cancel(rid, "the client disconnected")
        raise
    finally:
        if not gone:
            gw.stop_waiting(rid)
    gw.metrics.observe_result(result)
    if result.state != RequestStatus.COMPLETED:
        raise result_error(result)
    if result.embeddings:
        gw.inflight.learn_dimensions(req.model_name, len(result.embeddings[0]))
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


async def _rejoin_stream(
    gw: Gateway, req: RequestMetadata, watcher: DisconnectWatcher, include_usage: bool
) -> Response:
    """A streamed request resent with a known id: its chunks cannot be replayed, so the
    finished answer is sent as one SSE chunk (then [DONE]) once the original completes."""
    gw.wait_on(req.request_id)
    try:
        result = await watcher.race(gw.manager.wait(req.request_id))
    finally:
        gw.stop_waiting(req.request_id)
    if result.state != RequestStatus.COMPLETED:
        raise result_error(result)
    headers = {
        "x-sage-request-id": result.request_id,
        "x-sage-instance": result.instance_id or "",
        "x-sage-attempts": str(result.attempts),
        "cache-control": "no-cache",
    }
    return replay_as_sse(result, include_usage=include_usage, headers=headers)


async def _stream(
    gw: Gateway,
    req: RequestMetadata,
    watcher: DisconnectWatcher,
    endpoint: str,
    include_usage: bool,
) -> Response:
    manager = gw.manager
    chunks = cast(AsyncGenerator[list[dict[str, Any]], None], manager.stream_batches(request=req))
    try:
        first = await watcher.race(anext(chunks))
    except BaseException as exc:
        await chunks.aclose()  # runs the stream's cleanup: the request is cancelled upstream
        if isinstance(exc, Exception) and not isinstance(exc, RequestIdInUseError):
            with contextlib.suppress(KeyError):
                result = await manager.get_request_status(req.request_id)
                if result.state in (RequestStatus.FAILED, RequestStatus.CANCELLED):
                    # The request's own outcome says why (the stream only says "failed").
                    raise result_error(result) from None
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
        "x-sage-instance": manager.serving_instance(rid) or "",
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
    """The models the fleet serves; `available` says whether one can be served right now."""
    gw = _gateway(request)
    denied = _client_key_error(request, gw)
    if denied is not None:
        return denied
    data = [_model_entry(m) for m in model_availability(gw.manager.fleet).values()]
    return Response(_dumps({"object": "list", "data": data}), media_type="application/json")


def _model_entry(m: ModelAvailability) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": 0, "owned_by": "sage-cp",
            "kind": m.kind, "available": m.available}  # fmt: skip


async def model_detail(request: Request) -> Response:
    """OpenAI's `GET /v1/models/{model}`: 404 when not served, 503 when it cannot be now."""
    gw = _gateway(request)
    denied = _client_key_error(request, gw)
    if denied is not None:
        return denied
    name = request.path_params["model"]
    states = list(gw.manager.fleet)
    entry = model_availability(states).get(name)
    if entry is None:
        served = ", ".join(gw.manager.list_models()) or "none"
        return error_response(
            404,
            f"no instance serves model {name!r}; models served by this fleet: {served}",
            param="model",
            code="model_not_found",
        )
    if not entry.available:
        return error_response(
            503,
            f"model {name!r} cannot be served now ({entry.reason(states)})",
            param="model",
            code="model_unavailable",
            headers={"Retry-After": "1"},
        )
    return Response(_dumps(_model_entry(entry)), media_type="application/json")


async def sage_metrics(request: Request) -> Response:
    """The coordinator's own measurements (PerformanceMetrics) as JSON, for remote callers."""
    gw = _gateway(request)
    denied = _client_key_error(request, gw)
    if denied is not None:
        return denied
    return Response(gw.manager.get_metrics().model_dump_json(), media_type="application/json")
