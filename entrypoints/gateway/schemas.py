"""The OpenAI request bodies the gateway accepts, validated fully at the edge.

Every malformed body is answered here with a 400 naming the field, before anything is
queued: a request that cannot be served must never reach an instance, where its failure
would be mistaken for the instance's. The leniency is vLLM's (unknown fields pass through
to the engine; numbers may come as JSON integers or floats) and no more: `stream` must be a
boolean, roles are OpenAI's, `stream_options` is an object and only with `stream: true`,
embedding inputs are non-empty, and embeddings are not streamed. Scheduling fields
(`priority`, SLOs, budget) are validated by `RequestMetadata` afterwards.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from sage_cp_plugin.types import RequestKind

from .errors import GatewayError

# OpenAI's limits for one embeddings request are the anchor: 2,048 inputs, and about
# 300k tokens in all (~4 characters per token).
DEFAULT_MAX_EMBEDDING_INPUTS = 2048
DEFAULT_MAX_EMBEDDING_CHARS = 1_200_000

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    # Unknown fields pass through to vLLM, as vLLM's own request models allow.
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class ContentPart(_Open):
    type: StrictStr


class Message(_Open):
    role: Role
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        if self.content is None and self.role in ("system", "developer", "user"):
            raise ValueError(f"a '{self.role}' message needs 'content'")
        return self


class _Sampling(_Open):
    model: StrictStr = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: StrictInt | None = Field(None, ge=1)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed with 'stream': true")
        return self


class CompletionBody(_Sampling):
    # One prompt per request (the control plane schedules prompts one by one); a longer
    # list is refused by translate.py with the reason.
    prompt: StrictStr | list[StrictStr] = Field(min_length=1)


class ChatBody(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


class EmbeddingBody(_Open):
    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[StrictStr] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(None, ge=1)
    user: StrictStr | None = None
    stream: Literal[False] | None = None


_MODELS: dict[RequestKind, type[BaseModel]] = {
    RequestKind.COMPLETION: CompletionBody,
    RequestKind.CHAT: ChatBody,
    RequestKind.EMBEDDING: EmbeddingBody,
}


def _where(loc: tuple[int | str, ...]) -> str:
    """`('messages', 0, 'role')` -> `messages[0].role`, without pydantic's union tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part[:1].isupper() or part in ("str", "int", "float", "bool"):
            continue  # a union member's tag (`list[str]`, `StreamOptions`), not a field
        else:
            out += f".{part}" if out else part
    return out


def body_error(exc: ValidationError) -> GatewayError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = _where(tuple(first["loc"]))
    got = repr(first.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    msg = first["msg"].removeprefix("Value error, ")
    message = f"invalid '{where}': {msg} (got {got})" if where else f"invalid body: {msg}"
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more problem(s)"
    return GatewayError(400, message, param=where or None, code="invalid_value")


def too_many_inputs(held: str, max_inputs: int) -> GatewayError:
    return GatewayError(
        400,
        f"'input' holds {held}; at most {max_inputs} per request "
        "(split the list, or raise --max-embedding-inputs)",
        param="input",
        code="too_many_inputs",
    )


def check_embedding_size(body: dict[str, Any], max_inputs: int, max_chars: int) -> None:
    """Refuse an embeddings request larger than one request may be, before any copy of it
    is made (checked before the per-field validation, which would walk every input)."""
    inp = body.get("input")
    if not isinstance(inp, list | str):
        return  # the schema names the problem
    items = [inp] if isinstance(inp, str) else inp
    if len(items) > max_inputs:
        raise too_many_inputs(f"{len(items)} items", max_inputs)
    chars = sum(len(x) for x in items if isinstance(x, str))
    if chars > max_chars:
        raise GatewayError(
            400,
            f"'input' holds {chars} characters; at most {max_chars} per request "
            "(split the list, or raise --max-embedding-chars)",
            param="input",
            code="input_too_large",
        )


def validate_body(kind: RequestKind, body: dict[str, Any]) -> None:
    """Raise a 400 GatewayError naming the first bad field; the body itself is unchanged."""
    try:
        _MODELS[kind].model_validate(body)
    except ValidationError as exc:
        raise body_error(exc) from None
