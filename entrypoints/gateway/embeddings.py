"""`/v1/embeddings` with a long input list: split into parts across the embedding instances.

The split is `ControlPlaneManager.embed`'s (sage_cp_plugin/embedding_parts.py): parts of
`embedding_batch_size` inputs run as concurrent sub-requests, so one large request neither
lands on a single instance nor waits behind it, and each upstream answer stays small. Part
`i` of request `rid` has the id `rid#i`: a resent request (same `x-request-id`) rejoins the
parts still in flight or retained and submits only the missing ones.

The answer is streamed in input order as parts complete, each part's vectors encoded (a part
is small: `embedding_batch_size` vectors, a few ms of encoding, then a yield to the loop),
sent and dropped, instead of holding every part until the last one ends. The request's
in-flight bytes (inflight.py) stay reserved until the answer ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from sage_cp_plugin.embedding_parts import split_inputs
from sage_cp_plugin.rate_limits import charged_once
from sage_cp_plugin.types import RequestMetadata, RequestResult, RequestStatus

from .disconnect import ClientDisconnected, DisconnectWatcher
from .errors import result_error
from .inflight import Reservation
from .runtime import Gateway

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
VECTORS_PER_CHUNK = 8


def needs_split(gw: Gateway, req: RequestMetadata) -> bool:
    return isinstance(req.input, list) and len(req.input) > gw.manager.embedding_batch_size


def part_id(request_id: str, index: int) -> str:
    return f"{request_id}#{index}"


def _part_json(vectors: Sequence[Sequence[float]], first_index: int, base64_out: bool) -> bytes:
    items = []
    for i, vec in enumerate(vectors, start=first_index):
        emb: Any = vec
        if base64_out:
            emb = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
        items.append(_dumps({"object": "embedding", "index": i, "embedding": emb}))
    return ",".join(items).encode()


class EmbeddingPartFailed(Exception):
    """A part failed after the answer had started: the connection is aborted (the client sees
    a truncated response, never a valid-looking partial one)."""


def _release(waits: list[asyncio.Future[RequestResult] | None]) -> None:
    for w in waits:
        if w is not None:
            w.cancel()


async def _answer(
    gw: Gateway,
    req: RequestMetadata,
    waits: list[asyncio.Future[RequestResult] | None],
    submitted: list[str],
    held: Reservation,
    base64_out: bool,
) -> AsyncIterator[bytes]:
    """The OpenAI embeddings response, streamed part by part in input order as the parts
    complete: a part's vectors are encoded, sent and dropped, so the gateway holds only the
    parts that finished before an earlier one (plus what the result store retains)."""
    finished = False
    try:
        yield b'{"object":"list","data":['
        index = tokens = 0
        name = req.model_name
        for i, wait in enumerate(waits):
            assert wait is not None
            res = await wait
            waits[i] = None  # the future holds the result: let it go with the part
            gw.metrics.observe_result(res)
            if res.state != RequestStatus.COMPLETED:
                raise EmbeddingPartFailed(
                    f"embeddings request {req.request_id}: part {res.request_id} "
                    f"{res.state.value} after {index} vectors were sent: {res.error}"
                )
            vectors = res.embeddings or []
            if vectors:
                gw.inflight.learn_dimensions(req.model_name, len(vectors[0]))
            tokens += res.prompt_tokens
            name = name or (res.response or {}).get("model", "")
            del res
            # A few vectors per chunk, then a yield: encoding floats as JSON costs ~1 ms
            # per 384-value vector here, and a whole part at once would stall the loop.
            for start in range(0, len(vectors), VECTORS_PER_CHUNK):
                some = vectors[start : start + VECTORS_PER_CHUNK]
                yield (b"," if index else b"") + _part_json(some, index, base64_out)
                index += len(some)
                await asyncio.sleep(0)
            del vectors
        tail = {"model": name or "", "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        yield b"]," + _dumps(tail)[1:].encode()
        finished = True
    finally:
        if not finished:  # a failed part, or the client went away: stop the rest
            _stop(gw, waits, submitted, "the embeddings request ended early")
        held.release()


def _stop(
    gw: Gateway, waits: list[asyncio.Future[RequestResult] | None], ids: list[str], why: str
) -> None:
    _release(waits)
    for rid in ids:
        gw.manager.cancel(rid, why)


class _PartsResponse(StreamingResponse):
    """A StreamingResponse that cleans up even when its body never starts: starlette cancels
    the send when the client is already gone, and a generator never started runs no
    `finally` (the parts would run on and the bytes stay reserved)."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], None], **kw: Any):
        super().__init__(body, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def complete_split_embedding(
    gw: Gateway,
    req: RequestMetadata,
    watcher: DisconnectWatcher,
    base64_out: bool,
    held: Reservation,
) -> Response:
    """Submit every part (all or nothing), wait for the first, then stream the answer.

    Waiting for the first part before the status line keeps the usual HTTP errors for a
    request that fails at once (no instance, model down); a part failing later aborts the
    response. `held` (the request's in-flight bytes) is released when the answer ends."""
    manager = gw.manager
    assert isinstance(req.input, list)
    parts = split_inputs(req.input, manager.embedding_batch_size)
    ids = [part_id(req.request_id, i) for i in range(len(parts))]
    submitted: list[str] = []
    try:
        # One request against the rate limits, whatever the number of parts (a resend that
        # rejoins parts already running is charged again, as any resent request is).
        manager.admission.charge(req)
        with charged_once():
            for rid, part in zip(ids, parts, strict=True):
                if not await gw.knows(rid):
                    await manager.submit_request(
                        req.model_copy(update={"input": part, "request_id": rid})
                    )
                    submitted.append(rid)
    except Exception:
        for rid in submitted:  # all or nothing: a refused part refuses the request
            manager.cancel(rid, "another part of the embeddings request was refused")
        raise
    del parts
    # One waiter per part from the start: each result is delivered when its part ends, even
    # if the result store has dropped it by the time the answer reaches that part.
    waits: list[asyncio.Future[RequestResult] | None] = [
        asyncio.ensure_future(manager.wait(rid)) for rid in ids
    ]
    try:
        first = waits[0]
        assert first is not None
        head = await watcher.race(asyncio.shield(first))
        if head.state != RequestStatus.COMPLETED:
            gw.metrics.observe_result(head)
            raise result_error(head)
    except BaseException as exc:
        _release(waits)
        reason = (
            "the client disconnected"
            if isinstance(exc, ClientDisconnected)
            else ("another part of the embeddings request failed")
        )
        for rid in submitted:
            manager.cancel(rid, reason)
        raise
    running = {manager.dispatcher.instance_of(rid) for rid in ids} | {head.instance_id}
    headers = {
        "x-sage-request-id": req.request_id,
        # Instances known when the answer starts (the first part's and those running parts).
        "x-sage-instance": ",".join(sorted(i for i in running if i)),
        "x-sage-parts": str(len(ids)),
    }

    def on_close() -> None:  # after the body ended (then a no-op) or never started
        if not held.released:
            _stop(gw, waits, submitted, "the client went away before the answer")
            held.release()

    return _PartsResponse(
        _answer(gw, req, waits, submitted, held, base64_out),
        on_close,
        headers=headers,
        media_type="application/json",
    )
