"""Translation between `RequestMetadata` and OpenAI request/response bodies."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from sage_cp_plugin.errors import InvalidRequestBodyError
from sage_cp_plugin.types import ExecutionInstance, RequestKind, RequestMetadata

ENDPOINTS: dict[RequestKind, str] = {
    RequestKind.COMPLETION: "/v1/completions",
    RequestKind.CHAT: "/v1/chat/completions",
    RequestKind.EMBEDDING: "/v1/embeddings",
}


def model_for(request: RequestMetadata, instance: ExecutionInstance) -> str:
    if request.model_name:
        return request.model_name
    if instance.served_models:
        return instance.served_models[0]
    return instance.model_name


def build_body(
    request: RequestMetadata, instance: ExecutionInstance, *, stream: bool
) -> dict[str, Any]:
    """The JSON body vLLM expects for this request (extra OpenAI fields pass through)."""
    kind = request.request_kind
    body: dict[str, Any] = {"model": model_for(request, instance)}
    if kind == RequestKind.EMBEDDING:
        body["input"] = request.input
        body.update(request.extra_body)
        return body
    if kind == RequestKind.CHAT:
        body["messages"] = request.messages
    else:
        body["prompt"] = request.prompt if request.prompt is not None else ""
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    body["temperature"] = request.temperature
    if request.top_p != 1.0:
        body["top_p"] = request.top_p
    body.update(request.extra_body)
    if stream:
        body["stream"] = True
        raw_opts = body.get("stream_options")
        if raw_opts is not None and not isinstance(raw_opts, dict):
            raise InvalidRequestBodyError(
                f"'stream_options' must be an object, got {type(raw_opts).__name__}"
            )
        opts = dict(raw_opts or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
JSON_HEADERS = {"content-type": "application/json"}


def _orjson_same(value: Any, depth: int = 0) -> bool:
    """Whether orjson writes ``value`` byte for byte as `_encode` does: exact dicts (string
    keys), lists, strings, bools, None, 64-bit ints and finite floats that both print in the
    same notation (orjson writes 1e-05 as 0.00001). Anything else takes the standard
    encoder, with its errors (NaN, a plain Enum, a dataclass, which orjson would write)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-(2**63) <= value < 2**64)
    if t is float:
        return math.isfinite(value) and (value == 0 or abs(value) >= 1e-4)
    if depth > 64:
        return False
    if t is dict:
        return all(type(k) is str and _orjson_same(v, depth + 1) for k, v in value.items())
    if t is list:
        return all(_orjson_same(v, depth + 1) for v in value)
    return False


def encode_body(body: dict[str, Any]) -> bytes:
    """The body as UTF-8 JSON bytes, or InvalidRequestBodyError when the request's own
    content cannot be encoded (a lone surrogate, NaN, nesting deeper than Python's stack).

    orjson writes the common body (a prompt of several KB, a few numbers) ~10x faster than
    the standard encoder, and the same bytes (`_orjson_same`); what orjson refuses (a lone
    surrogate) goes to the standard encoder for its error."""
    if _orjson_same(body):
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError:
            pass
    try:
        return _encode(body).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        reason = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidRequestBodyError(
            f"the request body cannot be sent as JSON: {reason}"
        ) from None


def text_of(response: dict[str, Any]) -> str:
    """The generated text of a completion or chat response."""
    choices = response.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if "text" in c and c["text"] is not None:
        return str(c["text"])
    msg = c.get("message") or {}
    return str(msg.get("content") or "")


def delta_text(chunk: dict[str, Any]) -> str | None:
    """The text a streamed chunk adds (completion or chat format), or None when the chunk
    carries no generated token.

    A generated token whose text the engine holds back (vLLM streams a chunk per step even
    when the detokenizer has no complete text yet: a lone leading space, part of a UTF-8
    character) is "": it still marks the token's time. Time-to-first-token is the first
    such chunk, as vLLM's own TTFT histogram and `vllm bench serve` count it; the first
    chunk *with text* can be steps later, which biased both the learned decode speed and
    the simulator's calibration. Not tokens: the usage-only chunk (no choices) and a chat
    role header (some servers send it before the prompt is processed)."""
    choices = chunk.get("choices")
    if not choices:
        return None
    c = choices[0]
    text = c.get("text")
    if text is not None:
        return str(text)
    delta = c.get("delta")
    if not delta or "role" in delta:
        return None
    return str(delta.get("content") or "")


def assemble_response(
    kind: RequestKind, chunks: list[dict[str, Any]], text: str, usage: dict[str, Any] | None
) -> dict[str, Any]:
    """A non-streaming OpenAI response built from streamed chunks."""
    first = chunks[0] if chunks else {}
    finish = None
    for ch in reversed(chunks):
        for c in ch.get("choices") or []:
            if c.get("finish_reason"):
                finish = c["finish_reason"]
                break
        if finish:
            break
    if kind == RequestKind.CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": first.get("id", ""),
        "object": obj,
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": [choice],
        "usage": usage,
    }
