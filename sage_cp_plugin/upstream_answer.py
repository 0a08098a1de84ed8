"""An instance's answer as an attempt reads it, and what the attempt makes of it.

The executor (`executor.py`) owns the connections and sends the request; this module is the
other half: the few names an attempt reads of an answer (`UpstreamAnswer`, which an
httpx.Response, aiohttp's response behind `AiohttpAnswer` and the replay's direct transport
all provide), the error an unsuccessful status becomes, and the parsing of a whole answer
(`read_plain`) or of a server-sent-event stream (`read_stream`) into an `Outcome` with
loop-clock timestamps. Kept apart so that every transport is read by this one code: what a
replay measures is what a socket would give.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import aiohttp
import httpx
import numpy as np

from sage_cp_plugin import fastjson
from sage_cp_plugin.attempt_outcome import ChunkSink, Outcome
from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.openai_body import text_of
from sage_cp_plugin.stream_parse import StreamParse
from sage_cp_plugin.types import ExecutionInstance, RequestKind, RequestMetadata


class UpstreamAnswer(Protocol):
    """What an attempt reads of an instance's answer: an httpx.Response, or aiohttp's
    response behind `AiohttpAnswer`."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def reason_phrase(self) -> str: ...
    async def aread(self) -> bytes: ...
    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


class ClosableAnswer(UpstreamAnswer, Protocol):
    """An answer whose connection the caller releases (`aclose`) when done with it."""

    async def aclose(self) -> None: ...


@runtime_checkable
class InProcessUpstream(Protocol):
    """A transport that can answer a POST inside this process without httpx's request and
    response objects (the replay simulator's direct transport, `virtual/direct.py`). The
    attempt around it -- body encoding, status and error handling, the stream parser, the
    response parsing, timestamps -- is the same code as over a socket: only the exchange's
    framing is skipped, which a replay pays per request and need not."""

    async def post_in_process(
        self, url: httpx.URL, content: bytes, headers: Mapping[str, str]
    ) -> ClosableAnswer: ...


class AiohttpAnswer:
    """aiohttp's response with the few httpx.Response names an attempt uses."""

    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status_code(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    @property
    def reason_phrase(self) -> str:
        return self._resp.reason or ""

    async def aread(self) -> bytes:
        return await self._resp.read()

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._resp.content.iter_any()


def _retry_after(resp: UpstreamAnswer) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _vector(value: Any) -> list[float]:
    """An embedding as floats, from a JSON list or OpenAI's base64 float32 encoding."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(float).tolist()  # type: ignore[no-any-return]
    return [float(x) for x in value]


def _error_message(resp: UpstreamAnswer, body: bytes) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else None
        if msg is None and isinstance(data, dict):
            msg = data.get("message") or data.get("detail")
        if msg:
            return str(msg)
    except (ValueError, AttributeError):
        pass
    text = body.decode(errors="replace").strip()
    return text[:500] or resp.reason_phrase


def status_error(resp: UpstreamAnswer, body: bytes, instance: ExecutionInstance) -> UpstreamError:
    """The error an answer other than 200 becomes: retryable elsewhere for 408, 429 and 5xx,
    with the instance's own message and Retry-After."""
    code = resp.status_code
    retryable = code in (408, 429) or code >= 500
    return UpstreamError(
        f"instance {instance.instance_id} answered HTTP {code}: {_error_message(resp, body)}",
        status_code=code,
        instance_id=instance.instance_id,
        retryable=retryable,
        retry_after_s=_retry_after(resp),
    )


def read_plain(
    raw: bytes, status: int, request: RequestMetadata, instance: ExecutionInstance, out: Outcome
) -> None:
    """A whole (non-streamed) answer's body into `out`."""
    try:
        data = fastjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("response is not a JSON object")
    except ValueError as exc:
        raise UpstreamError(
            f"instance {instance.instance_id} sent malformed JSON: {exc}",
            instance_id=instance.instance_id,
            status_code=status,
        ) from exc
    out.response = data
    usage = data.get("usage") or {}
    out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    out.completion_tokens = int(usage.get("completion_tokens") or 0)
    out.kv_transfer_params = data.get("kv_transfer_params")
    if request.request_kind == RequestKind.EMBEDDING:
        items = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
        try:
            out.embeddings = [_vector(d["embedding"]) for d in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(
                f"instance {instance.instance_id} sent malformed embeddings: {exc}",
                instance_id=instance.instance_id,
                status_code=status,
            ) from exc
    else:
        out.text = text_of(data)


class PushAnswer(Protocol):
    """An answer that hands its body to a callback as it arrives (upstream_http.py): the
    stream is parsed inside the connection's read callback, without waking the attempt's
    task for every chunk."""

    async def read_into(self, feed: Callable[[bytes], None]) -> None: ...


async def read_stream(
    resp: UpstreamAnswer,
    request: RequestMetadata,
    instance: ExecutionInstance,
    out: Outcome,
    sink: ChunkSink | None,
    on_first_token: Callable[[], None] | None = None,
) -> None:
    """A server-sent-event stream (status 200) into `out`: each token's arrival on the loop's
    clock, every chunk handed to `sink` as it arrives (pass-through), the answer assembled
    from the chunks at the end. A stream that ends without [DONE] is a failed attempt."""
    parse = StreamParse(request, instance, out, sink, on_first_token)
    # Not isinstance(resp, PushAnswer): a runtime Protocol check walks the protocol's
    # members on every call (about as much CPU as the rest of this function here).
    read_into = getattr(resp, "read_into", None)
    if read_into is not None:
        await read_into(parse.feed)
    else:
        async for data in resp.aiter_bytes():
            parse.feed(data)
    parse.finish()
