"""One request, where it ran and what it gave: metadata and SLOs in, decision, timings and
result out (document names)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from sage_cp_plugin.types.base import StrictModel
from sage_cp_plugin.types.enums import (
    ExecutionInstanceType,
    ParallelismType,
    RequestKind,
    RequestPriority,
    RequestStatus,
)


def _new_request_id() -> str:
    # 64 random bits from the OS (a uuid4's first 16 hex digits held 60 and cost 4x as much:
    # the UUID object is built only to be cut).
    return f"req-{os.urandom(8).hex()}"


class SLO(StrictModel):
    """Latency objectives a request carries. All in milliseconds, all optional."""

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    e2e_ms: float | None = Field(default=None, gt=0)


class RequestMetadata(StrictModel):
    """One inference request (document fields plus chat, embeddings and sampling).

    `slo_deadline_ms` is the end-to-end deadline relative to arrival (the document's
    meaning); `ttft_slo_ms` / `tpot_slo_ms` add finer objectives.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    request_id: str = Field(default_factory=_new_request_id, min_length=1)
    user_id: str | None = None
    priority: RequestPriority = RequestPriority.NORMAL
    slo_deadline_ms: float | None = Field(default=None, gt=0)
    ttft_slo_ms: float | None = Field(default=None, gt=0)
    tpot_slo_ms: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    input: str | list[str] | None = None
    kind: RequestKind | None = None
    model_name: str | None = None
    stream: bool = False
    cost_budget: float | None = Field(default=None, gt=0)
    billing_tier: str = "standard"
    parallelism_hint: ParallelismType | None = None
    preferred_instance_id: str | None = None
    # Any extra OpenAI body fields (stop, seed, logprobs, ...) passed through unchanged.
    extra_body: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, Any] = Field(default_factory=dict)

    @field_validator("request_id", mode="before")
    @classmethod
    def _generate_id(cls, v: Any) -> Any:
        return _new_request_id() if v is None or v == "" else v

    @field_validator("messages")
    @classmethod
    def _messages_shape(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("messages must hold at least one message")
        for i, m in enumerate(v):
            if "role" not in m:
                raise ValueError(f"messages[{i}] has no 'role': {m!r}")
        return v

    @model_validator(mode="after")
    def _infer_kind(self) -> RequestMetadata:
        if self.kind is None:
            if self.input is not None and self.prompt is None and self.messages is None:
                kind = RequestKind.EMBEDDING
            elif self.messages is not None:
                kind = RequestKind.CHAT
            else:
                kind = RequestKind.COMPLETION
            object.__setattr__(self, "kind", kind)
        if self.kind == RequestKind.EMBEDDING and self.input is None:
            raise ValueError("an embedding request needs 'input'")
        if self.kind == RequestKind.CHAT and self.messages is None:
            if self.prompt is None:
                raise ValueError("a chat request needs 'messages'")
            object.__setattr__(self, "messages", [{"role": "user", "content": self.prompt}])
        return self

    @property
    def request_kind(self) -> RequestKind:
        assert self.kind is not None
        return self.kind

    def prompt_text(self) -> str:
        """The text the model reads first: used for token estimates and prefix hashing."""
        if self.prompt is not None:
            return self.prompt
        if self.messages is not None:
            parts: list[str] = []
            for m in self.messages:
                c = m.get("content")
                if isinstance(c, str):
                    parts.append(c)
                elif isinstance(c, list):
                    parts.extend(str(p.get("text", "")) for p in c if isinstance(p, dict))
            return "\n".join(parts)
        if isinstance(self.input, str):
            return self.input
        if isinstance(self.input, list):
            return "\n".join(self.input)
        return ""

    def estimated_input_tokens(self) -> int:
        """~4 characters per token, the usual estimate when no tokenizer is at hand."""
        return max(1, len(self.prompt_text()) // 4)

    def effective_ttft_slo_ms(self) -> float | None:
        return self.ttft_slo_ms

    def has_slo(self) -> bool:
        return any(
            x is not None for x in (self.slo_deadline_ms, self.ttft_slo_ms, self.tpot_slo_ms)
        )


class SchedulingDecision(StrictModel):
    """Where and why a request runs (document fields)."""

    model_config = ConfigDict(extra="allow")

    request_id: str
    target_instance_id: str
    parallelism_strategy: ParallelismType = ParallelismType.TENSOR_PARALLEL
    estimated_latency_ms: float = 0.0
    estimated_cost: float = 0.0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    phase: ExecutionInstanceType | None = None
    policy: str = ""
    router: str = ""
    reason: str = ""
    confidence: float = 1.0
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def instance_id(self) -> str:
        return self.target_instance_id


class RequestTimings(StrictModel):
    """Milliseconds, measured on the coordinator's clock: `queue_ms` arrival to dispatch
    of the attempt that answered, `prefill_ms` that dispatch to its first token, `ttft_ms`
    and `e2e_ms` from arrival."""

    queue_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    prefill_ms: float | None = None


class RequestResult(StrictModel):
    """What `get_request_status` / `wait` return: the document's `.state`, `.output`, `.error`."""

    model_config = ConfigDict(extra="allow")

    request_id: str
    state: RequestStatus
    output: str | None = None
    response: dict[str, Any] | None = None
    embeddings: list[list[float]] | None = None
    error: str | None = None
    # Why it failed, for machines: "upstream" (with the instance's HTTP status in
    # `status_code`, None when unreachable), "timeout", "no_instance", "rejected",
    # "cancelled", "stopped", "invalid_request" (the body cannot be sent), "internal".
    error_type: str | None = None
    status_code: int | None = None
    instance_id: str | None = None
    decision: SchedulingDecision | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    timings: RequestTimings = Field(default_factory=RequestTimings)
    slo_met: bool | None = None
    priority: RequestPriority = RequestPriority.NORMAL
    model_name: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)  # the request's own tags
    # What the attempts cost at the instances' prices (billing tier applied); None when
    # no instance it ran on has a price.
    cost: float | None = None

    @property
    def status(self) -> RequestStatus:
        return self.state
