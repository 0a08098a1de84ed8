"""Parsing an instance's server-sent-event stream into an attempt's `Outcome`, from bytes
fed as they arrive (in any pieces): by `upstream_answer.read_stream`'s loop, or inside a
connection's read callback (`upstream_http.py`), so one parser serves every transport.

Chunk by chunk, each with its own arrival time. Parsing the chunks of one read together (one
JSON array parse) was tried in session 14 and measured at no gain in CPU per request
(benchmarks/results/gateway_cpu_s14_parse_ab.md: 0.96-1.13x), so it is not done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sage_cp_plugin import fastjson
from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.openai_body import assemble_response, delta_text
from sage_cp_plugin.relayed_chunk import RelayedChunk
from sage_cp_plugin.types import ExecutionInstance, RequestMetadata

if TYPE_CHECKING:
    from sage_cp_plugin.attempt_outcome import ChunkSink, Outcome


class StreamParse:
    """The parser of one server-sent-event stream."""

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
        if not line.startswith(b"data:") or self._done:
            return  # after [DONE]: read to the end so the connection can be reused
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self._done = True
            return
        out = self._out
        iid = self._instance.instance_id
        try:
            chunk = fastjson.loads(payload)
            if not isinstance(chunk, dict):
                raise ValueError("chunk is not a JSON object")
        except ValueError as exc:
            raise UpstreamError(
                f"instance {iid} sent a malformed stream chunk: {exc}",
                instance_id=iid,
                body_started=out.relayed > 0,
            ) from exc
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamError(
                f"instance {iid} stream error: {msg}",
                instance_id=iid,
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
        if not self._done:
            iid = self._instance.instance_id
            raise UpstreamError(
                f"instance {iid} ended the stream without [DONE] after {len(self._chunks)} chunks",
                instance_id=iid,
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
