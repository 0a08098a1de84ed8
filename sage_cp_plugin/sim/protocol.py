"""Request bodies the simulator accepts and the OpenAI-style error body it answers with.

Request models allow unknown fields (``temperature``, ``top_p``, ...) as vLLM does, but check
the types of the fields the simulator uses, so a wrong type is a 400 naming field and value.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class SimHTTPError(Exception):
    """Turned into an OpenAI error response by the app."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "APIError"),
            "param": param,
            "code": status,
        }
    }
    return Response(json.dumps(body), status, headers, media_type="application/json")


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """One line per problem, ``field: message (got value)``; the first field as ``param``."""
    parts: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        first = first or loc
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts), first


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    continuous_usage_stats: bool = False


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="the simulator samples one choice")
    kv_transfer_params: dict[str, Any] | None = None
    # vLLM: lower runs earlier; only an engine started with --scheduling-policy priority
    # orders by it (the fcfs engine ignores it).
    priority: int = Field(0, ge=-(2**63), le=2**63 - 1)


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] = Field(min_length=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = Field("float", pattern="^(float|base64)$")
    dimensions: int | None = Field(None, ge=1)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


def remote_prefill_params(params: dict[str, Any] | None, prompt_len: int) -> dict[str, Any] | None:
    """The ``kv_transfer_params`` if a decode instance can use them, else ``None``.

    Mirrors what NixlConnector needs to pull the KV: the producer's engine id, block ids and
    side-channel address; ``remote_num_tokens`` (when sent) must match this prompt, because KV
    computed for other tokens is useless. Unusable params mean a local prefill, as in vLLM.
    """
    if not params or params.get("do_remote_prefill") is not True:
        return None
    if not isinstance(params.get("remote_engine_id"), str):
        return None
    if not isinstance(params.get("remote_block_ids"), list):
        return None
    if not isinstance(params.get("remote_host"), str):
        return None
    if not isinstance(params.get("remote_port"), int):
        return None
    num = params.get("remote_num_tokens")
    if num is not None and num != prompt_len:
        return None
    return params
