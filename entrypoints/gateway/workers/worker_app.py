"""A forwarding worker's ASGI app. Completions and chat completions are handled here (the
same validation and answers as `openai_routes`, with the decisions taken by the scheduling
process over `SchedulerLink`); every other route is proxied whole to the scheduling
process's own gateway app, so admin changes, /health, /metrics and the models list are
the one control plane's, whichever worker the client reached."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from sage_cp_plugin.fleetshare.claims import ClaimOutcome
from sage_cp_plugin.types import RequestKind, RequestPriority

from ..auth import check_client_key
from ..body import read_json_object
from ..disconnect import ClientDisconnected, DisconnectWatcher
from ..errors import GatewayError, error_response, result_error
from ..handover import Handover, explicit_id, owners_answer
from ..openai_routes import CLIENT_CLOSED, _dumps, _ms, failure_response, wants_usage
from ..schemas import validate_body
from ..settings import GatewaySettings
from ..sse import SSERelay, replay_as_sse
from ..translate import to_request
from .link import SchedulerLink, Submitted

FORWARDED = {
    "/v1/completions": RequestKind.COMPLETION,
    "/v1/chat/completions": RequestKind.CHAT,
}
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own, never passed on.
_HOP = frozenset((b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
                  b"proxy-connection", b"trailer"))  # fmt: skip


class WorkerApp:
    def __init__(
        self, index: int, link: SchedulerLink, settings: GatewaySettings, scheduler_http: str
    ) -> None:
        self.index = str(index)  # `x-sage-worker` on generation answers: which worker served
        self.link = link
        self.settings = settings
        self.shutting_down = False
        self.handover: Handover | None = None  # made at the first request a peer may own
        self._proxy = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=scheduler_http),
            base_url="http://sage-cp-scheduler",
            timeout=httpx.Timeout(None),  # the scheduler's own limits apply
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        kind = FORWARDED.get(path) if scope["method"] == "POST" else None
        if kind is not None:
            response = await self._generate(Request(scope, receive), kind, path)
        elif self.shutting_down and path == "/health":
            response = error_response(503, "the gateway is shutting down", code="shutting_down")
        else:
            await self._proxied(scope, receive, send)
            return
        await response(scope, receive, send)

    async def aclose(self) -> None:
        await self._proxy.aclose()
        if self.handover is not None:
            await self.handover.aclose()

    # -- generation requests -------------------------------------------------------------
    async def _generate(self, request: Request, kind: RequestKind, endpoint: str) -> Response:
        link = self.link
        model: Any = None
        priority: RequestPriority | None = None
        status = 500
        streamed = False
        watcher: DisconnectWatcher | None = None
        sub: Submitted | None = None
        try:
            check_client_key(request.headers, self.settings.api_key)
            if self.shutting_down:
                raise GatewayError(503, "the gateway is shutting down", code="shutting_down")
            body = await read_json_object(request, self.settings.max_body_bytes)
            model = body.get("model")
            validate_body(kind, body)
            handed = await self._claimed_elsewhere(request, body)
            if handed is not None:  # a live peer replica runs this id: its answer
                status = handed.status_code
                return handed
            include_usage = wants_usage(body)
            req = to_request(body, request.headers, kind, endpoint)
            priority = req.priority
            watcher = DisconnectWatcher(request.receive)
            sub = link.submit(req, stream=req.stream)
            if req.stream:
                response = await self._stream(sub, watcher, endpoint, include_usage)
                watcher = None  # the relay owns it now, and reports the request when it ends
                streamed = True
                return response
            response = await self._complete(sub, watcher)
            status = 200
            return response
        except Exception as exc:
            status, response = failure_response(exc)
            return response
        finally:
            if watcher is not None:
                watcher.close()
            if not streamed and link.alive and not (sub is not None and sub.counted):
                link.observe(endpoint, model, status, priority)

    async def _claimed_elsewhere(self, request: Request, body: dict[str, Any]) -> Response | None:
        """With `--redis-url`, a request carrying `x-request-id` claims the id across the
        replicas (through the scheduler, which holds the store and the peers' addresses);
        when a live peer holds it, this worker forwards the request there and relays the
        answer, as one process does (`handover`). None: run it here."""
        replica = self.link.replica_id
        rid = explicit_id(request)
        if replica is None or rid is None:
            return None  # no shared store, no id, or handed to us: nothing to ask, no cost
        if self.handover is None:
            self.handover = Handover(replica)
        link = self.link

        def claim(dead: str | None) -> Awaitable[ClaimOutcome]:
            return link.claim(rid, dead)

        return await owners_answer(self.handover, request, body, claim)

    async def _complete(self, sub: Submitted, watcher: DisconnectWatcher) -> Response:
        try:
            answer = await watcher.race(sub.done)
        except ClientDisconnected:
            self.link.cancel(sub, "the client disconnected")
            raise
        if answer.result is not None and not answer.completed:
            raise result_error(answer.result)
        sub.counted = answer.counted
        headers = {
            "x-sage-request-id": answer.request_id,
            "x-sage-instance": answer.instance_id,
            "x-sage-attempts": str(answer.attempts),
            "x-sage-queue-ms": _ms(answer.queue_ms),
            "x-sage-ttft-ms": _ms(answer.ttft_ms),
            "x-sage-e2e-ms": _ms(answer.e2e_ms),
            "x-sage-worker": self.index,
        }
        return Response(_dumps(answer.response or {}), headers=headers,
                        media_type="application/json")  # fmt: skip

    async def _stream(
        self, sub: Submitted, watcher: DisconnectWatcher, endpoint: str, include_usage: bool
    ) -> Response:
        link = self.link
        chunks = sub.stream()
        try:
            first = await watcher.race(anext(chunks))
        except StopAsyncIteration:
            # No chunk: a resend that joined a finished or running request (its chunks
            # cannot be replayed), or an answer of no chunks: sent as one SSE chunk.
            answer = sub.done.result()
            result = answer.result
            if result is None:  # completed here without a chunk: nothing to replay from
                raise GatewayError(502, "the instance's stream ended without a chunk",
                                   code="upstream_error") from None  # fmt: skip
            headers = {"x-sage-request-id": result.request_id,
                       "x-sage-instance": result.instance_id or "",
                       "x-sage-attempts": str(result.attempts), "cache-control": "no-cache"}  # fmt: skip
            link.observe(endpoint, sub.request.model_name, 200, sub.request.priority)
            watcher.close()
            return replay_as_sse(result, include_usage=include_usage, headers=headers)
        except BaseException:
            await chunks.aclose()
            link.cancel(sub, "the client disconnected")
            raise

        async def on_end(ok: bool) -> None:
            if not ok:
                link.cancel(sub, "the caller stopped reading the stream")
            if link.alive:
                req = sub.request
                link.observe(endpoint, req.model_name, 200 if ok else CLIENT_CLOSED, req.priority)

        headers = {
            "x-sage-request-id": sub.request.request_id,
            "x-sage-instance": sub.instance_id,
            "x-sage-worker": self.index,
            "cache-control": "no-cache",
        }
        return SSERelay(
            first, chunks, watcher, include_usage=include_usage, headers=headers, on_end=on_end
        )

    # -- everything else: the scheduling process's own app -------------------------------
    async def _proxied(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def body() -> AsyncIterator[bytes]:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP]
        try:
            req = self._proxy.build_request(scope["method"], target, headers=headers,
                                            content=body())  # fmt: skip
            resp = await self._proxy.send(req, stream=True)
        except (httpx.TransportError, ClientDisconnect) as exc:
            if isinstance(exc, ClientDisconnect):
                return
            response = error_response(
                503, f"the scheduling process cannot be reached: {exc}", code="shutting_down"
            )
            await response(scope, receive, send)
            return
        try:
            out = [(k, v) for k, v in resp.headers.raw if k.lower() not in _HOP]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            async for data in resp.aiter_raw():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with contextlib.suppress(Exception):
                await resp.aclose()
