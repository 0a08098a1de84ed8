"""Handing a request to the replica that claimed its `x-request-id` (`--redis-url`).

A client that resends a request to another replica (a batch shard after a transport error,
a retrying proxy) gets the one run's answer: this replica claims the id in the shared store
(`fleetshare/claims.py`); when a live peer holds the claim, the request is forwarded to the
address that peer advertises, marked with `x-sage-handover` so the peer runs or joins it
and never hands it on (no loops), and the peer's answer is relayed (a stream chunk by
chunk). A peer that cannot be reached before its answer starts (it died, it is stopping)
loses the claim to this replica, which runs the request itself. A stream whose owner dies
mid-answer ends with an error event: its chunks cannot be taken back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from sage_cp_plugin.fleetshare.claims import ClaimOutcome, HandOver, Run

from .disconnect import ClientDisconnected, DisconnectWatcher

if TYPE_CHECKING:
    from .runtime import Gateway

HANDOVER_HEADER = "x-sage-handover"  # on a handed request: the sender's replica id
HANDED_TO_HEADER = "x-sage-handed-to"  # on the answer: the replica that ran it
# At most this many forwards per request: the owner, then whoever took the claim over.
MAX_HOPS = 2
_NOT_FORWARDED = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
     "upgrade", "accept-encoding", "proxy-authorization", "proxy-connection"}
)  # fmt: skip
_NOT_RELAYED = frozenset(
    {"content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding",
     "date", "server"}
)  # fmt: skip
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class OwnerUnreachable(Exception):
    """The owner gave no answer (connection refused or lost before its answer, or it is
    stopping): nothing reached the client, so this replica may run the request."""


def explicit_id(request: Request) -> str | None:
    """The id a request carries that peers may have claimed; None when it must run here:
    no `x-request-id`, or it was handed over already."""
    if HANDOVER_HEADER in request.headers:
        return None
    return request.headers.get("x-request-id") or None


class Handover:
    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        # No read timeout: the owner bounds the run; connecting must be quick (a dead
        # owner's host may drop packets rather than refuse).
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def forward(self, to: HandOver, request: Request, body: dict[str, Any]) -> Response:
        headers = {k: v for k, v in request.headers.items() if k not in _NOT_FORWARDED}
        headers[HANDOVER_HEADER] = self.replica_id
        headers["content-type"] = "application/json"
        upstream = self.client.build_request(
            "POST", to.address.rstrip("/") + request.url.path, content=_dumps(body),
            headers=headers,
        )  # fmt: skip
        try:
            resp = await self.client.send(upstream, stream=True)
        except httpx.TransportError as exc:
            raise OwnerUnreachable(f"{to.owner} at {to.address}: {exc!r}") from exc
        relayed = False  # a stream's relay closes the owner's answer when it ends
        try:
            if resp.status_code == 503:  # stopping, or no instance: it did not run it
                raise OwnerUnreachable(f"{to.owner} answered 503")
            out = {k: v for k, v in resp.headers.items() if k not in _NOT_RELAYED}
            out[HANDED_TO_HEADER] = to.owner
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                relayed = True
                return StreamingResponse(
                    _relay(resp, request), status_code=resp.status_code, headers=out
                )
            try:
                content = await resp.aread()
            except httpx.TransportError as exc:
                raise OwnerUnreachable(f"{to.owner} died answering: {exc!r}") from exc
            return Response(content, status_code=resp.status_code, headers=out)
        finally:
            if not relayed:
                await resp.aclose()


async def _relay(resp: httpx.Response, request: Request) -> AsyncIterator[bytes]:
    """The owner's stream as it comes; a client leaving closes the owner's stream (which
    cancels the run there unless another client waits for it)."""
    watcher = DisconnectWatcher(request.receive)
    chunks = resp.aiter_raw()
    try:
        while True:
            try:
                chunk = await watcher.race(anext(chunks))
            except StopAsyncIteration:
                return
            except ClientDisconnected:
                return
            except httpx.TransportError as exc:
                err = {"error": {"message": f"the replica running this request died: {exc!r}",
                                 "type": "server_error", "code": "replica_lost"}}  # fmt: skip
                yield b"data: " + _dumps(err).encode() + b"\n\n"
                return
            yield chunk
    finally:
        watcher.close()
        await resp.aclose()


# Claims the request's id (`dead` None) or takes over the claim of `dead`, an owner that
# could not be reached: in this process (`fleetshare`), or through the scheduling process of
# `--workers` (workers/link.py).
Claim = Callable[[str | None], Awaitable[ClaimOutcome]]


async def claimed_elsewhere(gw: Gateway, request: Request, body: dict[str, Any]) -> Response | None:
    """The answer of the replica that owns this request's id, or None: run it here (no
    id, no store, a known id, this replica's claim, the owner dead, the store away)."""
    share, handover = gw.share, gw.handover
    if share is None or handover is None:
        return None  # no shared store: nothing to ask, no cost
    rid = explicit_id(request)
    if rid is None or await gw.knows(rid):
        return None
    claims = share.claims

    def claim(dead: str | None) -> Awaitable[ClaimOutcome]:
        return claims.claim(rid) if dead is None else claims.take_over(rid, dead)

    return await owners_answer(handover, request, body, claim)


async def owners_answer(
    handover: Handover, request: Request, body: dict[str, Any], claim: Claim
) -> Response | None:
    """Claim the id; while a live peer holds it, forward the request there and return its
    answer; a peer that cannot be reached loses the claim (None: run the request here)."""
    outcome = await claim(None)
    for _ in range(MAX_HOPS):
        if isinstance(outcome, Run):
            return None
        watcher = DisconnectWatcher(request.receive)
        try:
            return await watcher.race(handover.forward(outcome, request, body))
        except OwnerUnreachable:
            outcome = await claim(outcome.owner)
        finally:
            watcher.close()
    return None
