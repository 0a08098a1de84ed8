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

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp
import httpx
import numpy as np

from sage_cp_plugin import fastjson
from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.openai_body import assemble_response, delta_text, text_of
from sage_cp_plugin.relayed_chunk import RelayedChunk
from sage_cp_plugin.types import ExecutionInstance, RequestKind, RequestMetadata

ChunkSink = Callable[[dict[str, Any]], None]


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


@dataclass
class Outcome:
    """What one attempt on one instance produced, with loop-clock timestamps."""

    response: dict[str, Any] | None = None
    text: str | None = None
    embeddings: list[list[float]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float = 0.0
    token_times: list[float] = field(default_factory=list)
    kv_transfer_params: dict[str, Any] | None = None
    relayed: int = 0  # chunks already handed to the caller: after one, no retry is safe


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


class StreamParse:
    """The parser of one server-sent-event stream, fed the bytes as they come (in any
    pieces), by `read_stream`'s loop or by a connection's read callback."""

    __slots__ = (
        "_chunks",
        "_done",
        "_instance",
        "_on_first_token",
        "_out",
        "_parts",
        "_pending",
        "_request",
        "_sink",
        "_time",
        "_usage",
    )  # fmt: skip

    def __init__(
        self,
        request: RequestMetadata,
        instance: ExecutionInstance,
        out: Outcome,
        sink: ChunkSink | None,
        on_first_token: Callable[[], None] | None,
    ) -> None:
        self._request = request
        self._instance = instance
        self._out = out
        self._sink = sink
        self._on_first_token = on_first_token
        self._time = asyncio.get_running_loop().time
        self._chunks: list[dict[str, Any]] = []
        self._parts: list[str] = []
        self._usage: dict[str, Any] | None = None
        self._done = False
        # Lines split from the raw bytes here: httpx's aiter_lines stacks a text
        # decoder and a line decoder (three generators per network chunk), measured at
        # about a tenth of the gateway's CPU; json.loads reads UTF-8 bytes itself.
        self._pending = b""

    def feed(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n") if self._pending else data.split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if line:  # every event ends with an empty line: no call for it
                self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if self._done:
            return  # read to the end so the connection goes back to the pool
        if payload == b"[DONE]":
            self._done = True
            return
        out = self._out
        instance = self._instance
        try:
            chunk = fastjson.loads(payload)
            if not isinstance(chunk, dict):
                raise ValueError("chunk is not a JSON object")
        except ValueError as exc:
            raise UpstreamError(
                f"instance {instance.instance_id} sent a malformed stream chunk: {exc}",
                instance_id=instance.instance_id,
                body_started=out.relayed > 0,
            ) from exc
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamError(
                f"instance {instance.instance_id} stream error: {msg}",
                instance_id=instance.instance_id,
                body_started=out.relayed > 0,
            )
        now = self._time()
        text = delta_text(chunk)
        if text is not None:
            if out.first_token_at is None:
                out.first_token_at = now
                if self._on_first_token is not None:
                    self._on_first_token()
            out.token_times.append(now)
            self._parts.append(text)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        self._chunks.append(chunk)
        if self._sink is not None:
            self._sink(RelayedChunk(chunk, payload))  # relayed as the instance's bytes
            out.relayed += 1

    def finish(self) -> None:
        """The end of the body: the last line without a newline, then the answer."""
        if self._pending:
            pending, self._pending = self._pending, b""
            self._line(pending)
        out = self._out
        instance = self._instance
        if not self._done:
            raise UpstreamError(
                f"instance {instance.instance_id} ended the stream without [DONE] "
                f"after {len(self._chunks)} chunks",
                instance_id=instance.instance_id,
                body_started=out.relayed > 0,
            )
        if out.first_token_at is None:
            out.first_token_at = self._time()
        out.text = "".join(self._parts)
        usage = self._usage
        if usage:
            out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            out.completion_tokens = int(usage.get("completion_tokens") or 0)
        else:
            out.completion_tokens = len(out.token_times)
        out.response = assemble_response(self._request.request_kind, self._chunks, out.text, usage)
