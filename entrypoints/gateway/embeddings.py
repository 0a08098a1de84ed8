"""`/v1/embeddings` with a long input list: split into parts across the embedding instances.

The split is `ControlPlaneManager.embed`'s (sage_cp_plugin/embedding_parts.py): parts of
`embedding_batch_size` inputs run as concurrent sub-requests, so one large request neither
lands on a single instance nor waits behind it, and each upstream answer stays small. Part
`i` of request `rid` has the id `rid#i`: a resent request (same `x-request-id`) rejoins the
parts still in flight or retained and submits only the missing ones. A large answer is
serialised in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
from starlette.responses import Response, StreamingResponse

from sage_cp_plugin.embedding_parts import split_inputs
from sage_cp_plugin.types import RequestMetadata, RequestResult, RequestStatus

from .disconnect import ClientDisconnected, DisconnectWatcher
from .errors import result_error
from .runtime import Gateway

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


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


async def _answer(
    results: Sequence[RequestResult], model: str | None, base64_out: bool
) -> AsyncIterator[bytes]:
    """The OpenAI embeddings response, one part at a time, indices in input order."""
    yield b'{"object":"list","data":['
    index = 0
    for res in results:
        vectors = res.embeddings or []
        if vectors:
            yield (b"," if index else b"") + _part_json(vectors, index, base64_out)
        index += len(vectors)
        await asyncio.sleep(0)  # let other requests in between parts
    tokens = sum(r.prompt_tokens for r in results)
    name = model or (results[0].response or {}).get("model", "")
    tail = {"model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    yield b"]," + _dumps(tail)[1:].encode()


async def complete_split_embedding(
    gw: Gateway, req: RequestMetadata, watcher: DisconnectWatcher, base64_out: bool
) -> Response:
    manager = gw.manager
    assert isinstance(req.input, list)
    parts = split_inputs(req.input, manager.embedding_batch_size)
    ids = [part_id(req.request_id, i) for i in range(len(parts))]
    submitted: list[str] = []
    try:
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
    try:
        results: list[RequestResult] = await watcher.race(
            asyncio.gather(*(manager.wait(rid) for rid in ids))
        )
    except ClientDisconnected:
        for rid in submitted:
            manager.cancel(rid, "the client disconnected")
        raise
    for res in results:
        gw.metrics.observe_result(res)
    failed = next((r for r in results if r.state != RequestStatus.COMPLETED), None)
    if failed is not None:
        raise result_error(failed)
    headers = {
        "x-sage-request-id": req.request_id,
        "x-sage-instance": ",".join(sorted({r.instance_id or "" for r in results})),
        "x-sage-attempts": str(max(r.attempts for r in results)),
        "x-sage-parts": str(len(results)),
    }
    return StreamingResponse(
        _answer(results, req.model_name, base64_out),
        headers=headers,
        media_type="application/json",
    )
