"""Public data types of the control plane (the names of the sageLLM Control Plane document).

Every type is a pydantic v2 model so bad input is rejected at the boundary with a message
that names the field and the bad value. Enums accept their member, their value and their
name (any case), because the document's examples use all three (`"prefilling"`,
`"PREFILLING"`, `ExecutionInstanceType.PREFILLING`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import IntEnum, StrEnum
from functools import cached_property
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)


class _LenientEnumMixin:
    """Lets an enum be built from its name in any case, besides its value."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            key = value.strip()
            for member in cls:  # type: ignore[attr-defined]
                if member.name.lower() == key.lower() or str(member.value).lower() == key.lower():
                    return member
            if key.lstrip("-").isdigit():
                return cls(int(key))  # type: ignore[call-arg]
        return None


class RequestPriority(_LenientEnumMixin, IntEnum):
    """Lower value = more urgent (the document's numbering)."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4


class RequestStatus(_LenientEnumMixin, StrEnum):
    """Lifecycle of a request. A str enum, so `status.state == "completed"` holds.

    PENDING: admitted, not yet dispatchable (the control plane is not started, or the
    request waits out a retry backoff). QUEUED: in the queue, waiting for an instance.
    SCHEDULED: sent to an instance, no output token yet (its prompt is being processed).
    RUNNING: the instance has sent its first token (seen when the upstream streams, the
    default). Then one of COMPLETED, FAILED, CANCELLED.
    """

    PENDING = "pending"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED)


class ParallelismType(_LenientEnumMixin, StrEnum):
    TENSOR_PARALLEL = "tp"
    PIPELINE_PARALLEL = "pp"
    DATA_PARALLEL = "dp"
    EXPERT_PARALLEL = "ep"
    HYBRID = "hybrid"


class ExecutionInstanceType(_LenientEnumMixin, StrEnum):
    """Role of a vLLM instance. `embedding` instances serve `/v1/embeddings` only."""

    GENERAL = "general"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    HYBRID = "hybrid"
    EMBEDDING = "embedding"


class RequestKind(_LenientEnumMixin, StrEnum):
    """Which OpenAI endpoint a request goes to."""

    COMPLETION = "completion"
    CHAT = "chat"
    EMBEDDING = "embedding"


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_enum_values=False,
        arbitrary_types_allowed=False,
    )


class PrefillingConfig(_Model):
    """How a prefill-capable instance is run (document names), and what the control plane
    does with it:

    - `target_batch_size`: at most this many requests are in flight on the instance at
      once (with `max_concurrent_requests`, the lower bound wins).
    - `enable_chunked_prefill=False`: vLLM then cannot schedule a prompt longer than its
      token budget, `max_chunk_size_tokens` (`--max-num-batched-tokens`), so longer prompts
      are not sent to this instance. With chunked prefill on, any prompt length is served
      in chunks of `max_chunk_size_tokens`; the control plane does not need the size.
    - `tensor_parallel_size` / `pipeline_parallel_size`: None = the instance's own; when
      given they must equal it (one server has one layout).
    """

    target_batch_size: int = Field(default=64, gt=0)
    tensor_parallel_size: int | None = Field(default=None, gt=0)
    pipeline_parallel_size: int | None = Field(default=None, gt=0)
    enable_chunked_prefill: bool = True
    max_chunk_size_tokens: int = Field(default=8192, gt=0)


class DecodingConfig(_Model):
    """How a decode-capable instance is run (document names), and what the control plane
    does with it:

    - `max_parallel_requests`: at most this many requests in flight on the instance at
      once (vLLM's `--max-num-seqs`; with `max_concurrent_requests`, the lower wins).
    - `target_latency_ms`: the time per output token to keep; while the instance's
      measured time per output token exceeds it, it takes no new request unless idle.
    - `tensor_parallel_size` / `pipeline_parallel_size`: as in `PrefillingConfig`.
    """

    target_latency_ms: float = Field(default=50.0, gt=0)
    max_parallel_requests: int = Field(default=200, gt=0)
    tensor_parallel_size: int | None = Field(default=None, gt=0)
    pipeline_parallel_size: int | None = Field(default=None, gt=0)


class PDSeparationConfig(_Model):
    """Prefill/decode separation settings.

    `routing_policy`: `threshold` (input length / ratio), `adaptive` (threshold plus
    priority and SLO), or `none`. `disaggregated` turns on vLLM's real two-step protocol
    (prefill on one instance, decode on another with `kv_transfer_params`); the trigger is
    `always`, `threshold` (uncached prompt longer than `prefilling_threshold_input_tokens`)
    or `predicted` (per request, when the split beats serving it whole: `split_decision.py`;
    use it with `routing_policy="none"` so whole requests may run on any instance).
    """

    enabled: bool = True
    routing_policy: str = "adaptive"
    prefilling_threshold_input_tokens: int = Field(default=800, gt=0)
    prefilling_threshold_ratio: float = Field(default=4.0, gt=0)
    disaggregated: bool = False
    disaggregation_trigger: str = "threshold"
    prefill_router: str = "load_balanced"
    decode_router: str = "load_balanced"

    @field_validator("routing_policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        allowed = {"threshold", "adaptive", "none"}
        if v not in allowed:
            raise ValueError(f"routing_policy={v!r} is not one of {sorted(allowed)}")
        return v

    @field_validator("disaggregation_trigger")
    @classmethod
    def _known_trigger(cls, v: str) -> str:
        allowed = {"always", "threshold", "predicted"}
        if v not in allowed:
            raise ValueError(f"disaggregation_trigger={v!r} is not one of {sorted(allowed)}")
        return v


_DERIVED_LIMITS = (
    "slot_limit",
    "max_prompt_tokens",
    "decode_target_s",
    "batched_tokens_hint",
    "kv_capacity_hint",
)


class ExecutionInstance(_Model):
    """A vLLM server the control plane can send requests to.

    Static description only: live state (in-flight requests, scraped metrics, health)
    lives in `InstanceState` snapshots so policies and routers see consistent values.
    Prices (`price_per_1k_tokens`, or `price_per_gpu_hour` x `gpu_count` x the request's
    share of GPU time; `prices_by_tier` per billing tier) feed the cost-optimized policy,
    `RequestResult.cost` and `PerformanceMetrics.total_cost`. Unknown fields are refused;
    free-form data goes in `metadata`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    instance_id: str = Field(min_length=1)
    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    model_name: str = ""
    served_models: list[str] = Field(default_factory=list)
    instance_type: ExecutionInstanceType = ExecutionInstanceType.GENERAL
    scheme: str = "http"

    tensor_parallel_size: int = Field(default=1, gt=0)
    pipeline_parallel_size: int = Field(default=1, gt=0)
    data_parallel_size: int = Field(default=1, gt=0)
    expert_parallel_size: int = Field(default=1, gt=0)
    gpu_count: int = Field(default=1, gt=0)
    gpu_memory_gb: float = Field(default=0.0, ge=0)

    max_concurrent_requests: int = Field(default=100, gt=0)
    price_per_1k_tokens: float | None = Field(default=None, ge=0)
    price_per_gpu_hour: float | None = Field(default=None, ge=0)
    # Billing tier -> price per 1k tokens for requests of that tier (`billing_tier`);
    # a tier not listed pays `price_per_1k_tokens` / `price_per_gpu_hour`.
    prices_by_tier: dict[str, float] = Field(default_factory=dict)
    # Relative speed hint used before any observation exists (1.0 = reference instance).
    speed_hint: float = Field(default=1.0, gt=0)
    # The server's `--scheduling-policy`. With "priority" the coordinator sends each
    # request's engine priority (the policy's order) so vLLM's own queue follows it too;
    # an fcfs server is sent none (vLLM documents that it may reject a non-zero one).
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"

    prefilling_config: PrefillingConfig | None = None
    decoding_config: DecodingConfig | None = None

    # Document compatibility: mutable status flags. `is_available=False` at registration
    # registers the instance drained; `is_healthy=False` registers it unhealthy until a
    # probe passes. Afterwards the coordinator owns the truth and keeps them in sync.
    is_available: bool = True
    is_healthy: bool = True
    health_status: str = "healthy"
    metadata: dict[str, Any] = Field(default_factory=dict)

    # vLLM's KV-cache events (`--kv-events-config`): where this instance publishes them and
    # its replay endpoint, so the coordinator knows what it caches (docs/kv-events.md). A
    # bind address such as tcp://*:5557 is dialled at `host`.
    kv_events_endpoint: str | None = None
    kv_events_replay_endpoint: str | None = None
    kv_events_topic: str = ""
    # How the coordinator computes a prompt's token ids for this instance's events: "sim"
    # (the simulator's tokenizer) or a path to the served model's tokenizer.json.
    tokenizer: str | None = None

    @field_validator("kv_events_endpoint", "kv_events_replay_endpoint")
    @classmethod
    def _zmq_address(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"{v!r} is not a ZeroMQ address (tcp://host:port or ipc://path)")
        return v

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v not in ("http", "https"):
            raise ValueError(f"scheme={v!r} must be 'http' or 'https'")
        return v

    @field_validator("prices_by_tier")
    @classmethod
    def _tier_prices(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: p for k, p in v.items() if not p >= 0}
        if bad:
            raise ValueError(f"prices_by_tier must hold prices >= 0, got {bad}")
        return v

    @model_validator(mode="after")
    def _models(self) -> ExecutionInstance:
        if not self.served_models and self.model_name:
            object.__setattr__(self, "served_models", [self.model_name])
        t = self.instance_type
        for name, cfg, wrong in (
            ("prefilling_config", self.prefilling_config, ExecutionInstanceType.DECODING),
            ("decoding_config", self.decoding_config, ExecutionInstanceType.PREFILLING),
        ):
            if cfg is None:
                continue
            if t in (wrong, ExecutionInstanceType.EMBEDDING):
                raise ValueError(f"{name} does not apply to a {t.value} instance")
            for dim in ("tensor_parallel_size", "pipeline_parallel_size"):
                given = getattr(cfg, dim)
                if given is not None and given != getattr(self, dim):
                    raise ValueError(
                        f"{name}.{dim}={given} differs from the instance's {dim}="
                        f"{getattr(self, dim)}; one server has one layout: set them equal"
                    )
        return self

    # Derived limits are read on every dispatch decision, per instance: cached in the
    # instance's __dict__ (a plain attribute read) and dropped whenever a field is assigned.
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self._drop_derived_limits()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # pydantic copies __dict__ (cached limits included) and applies `update` to it
        # without __setattr__: a copy with a new field must not keep the old field's limits.
        copy = super().model_copy(update=update, deep=deep)
        copy._drop_derived_limits()
        return copy

    def _drop_derived_limits(self) -> None:
        for derived in _DERIVED_LIMITS:
            self.__dict__.pop(derived, None)

    @cached_property
    def slot_limit(self) -> int:
        """Requests the control plane keeps in flight here at most."""
        limit = self.max_concurrent_requests
        if self.prefilling_config is not None:
            limit = min(limit, self.prefilling_config.target_batch_size)
        if self.decoding_config is not None:
            limit = min(limit, self.decoding_config.max_parallel_requests)
        return limit

    @cached_property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt vLLM can schedule here (None: any)."""
        cfg = self.prefilling_config
        if cfg is not None and not cfg.enable_chunked_prefill:
            return cfg.max_chunk_size_tokens
        return None

    @cached_property
    def batched_tokens_hint(self) -> int | None:
        """`metadata["max_num_batched_tokens"]` when it states a positive number (the
        engine's chunked-prefill budget per step; the load model's default otherwise)."""
        value = self.metadata.get("max_num_batched_tokens") if self.metadata else None
        return int(value) if isinstance(value, int | float) and value > 0 else None

    @cached_property
    def kv_capacity_hint(self) -> float | None:
        """`metadata["kv_capacity_tokens"]` when it states a positive number."""
        value = self.metadata.get("kv_capacity_tokens") if self.metadata else None
        return float(value) if isinstance(value, int | float) and value > 0 else None

    @cached_property
    def decode_target_s(self) -> float | None:
        """`DecodingConfig.target_latency_ms` in seconds per output token (None: no target)."""
        cfg = self.decoding_config
        return None if cfg is None else cfg.target_latency_ms / 1000.0

    def price_per_1k_for(self, tier: str) -> float | None:
        return self.prices_by_tier.get(tier, self.price_per_1k_tokens)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def serves(self, model: str | None) -> bool:
        return (
            model is None
            or model in self.served_models
            or (not self.served_models and not self.model_name)
        )

    @property
    def is_embedding(self) -> bool:
        return self.instance_type == ExecutionInstanceType.EMBEDDING


def _new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:16]}"


class SLO(_Model):
    """Latency objectives a request carries. All in milliseconds, all optional."""

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    e2e_ms: float | None = Field(default=None, gt=0)


class RequestMetadata(_Model):
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


class SchedulingDecision(_Model):
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


class ParallelismConfig(_Model):
    """A parallel layout (document fields)."""

    model_config = ConfigDict(extra="allow")

    strategy: ParallelismType = ParallelismType.TENSOR_PARALLEL
    tensor_parallel_size: int = Field(default=1, gt=0)
    pipeline_parallel_size: int = Field(default=1, gt=0)
    data_parallel_size: int = Field(default=1, gt=0)
    expert_parallel_size: int = Field(default=1, gt=0)
    gpu_count: int = Field(default=1, gt=0)
    reason: str = ""

    @property
    def total_gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size


class RequestTimings(_Model):
    """Milliseconds, measured on the coordinator's clock: `queue_ms` arrival to dispatch
    of the attempt that answered, `prefill_ms` that dispatch to its first token, `ttft_ms`
    and `e2e_ms` from arrival."""

    queue_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    prefill_ms: float | None = None


class RequestResult(_Model):
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


class PerformanceMetrics(_Model):
    """Fleet-wide measurements (document fields plus TTFT/TPOT/queue and per-priority SLO)."""

    model_config = ConfigDict(extra="allow")

    total_requests: int = 0
    completed_requests: int = 0
    failed_requests: int = 0
    active_requests: int = 0
    queued_requests: int = 0
    avg_latency_ms: float = 0.0
    p50_latency_ms: float = 0.0
    p95_latency_ms: float = 0.0
    p99_latency_ms: float = 0.0
    avg_ttft_ms: float = 0.0
    p50_ttft_ms: float = 0.0
    p95_ttft_ms: float = 0.0
    p99_ttft_ms: float = 0.0
    avg_tpot_ms: float = 0.0
    p95_tpot_ms: float = 0.0
    avg_queue_ms: float = 0.0
    p95_queue_ms: float = 0.0
    tokens_per_second: float = 0.0
    requests_per_second: float = 0.0
    slo_violations: int = 0
    slo_compliance_rate: float = 1.0
    slo_attainment_by_priority: dict[str, float] = Field(default_factory=dict)
    goodput_rps: float = 0.0
    # Requests in flight / slots (the instances' slot limits), now.
    slot_occupancy: float = 0.0
    # Mean KV-cache usage (0..1) reported by the instances' fresh /metrics; None if none.
    kv_cache_usage: float | None = None
    # GPU compute utilisation as the instances report it. vLLM's /metrics has no such
    # metric, so it is None; slot_occupancy and kv_cache_usage are what is measured.
    gpu_utilization: float | None = None
    total_cost: float = 0.0
    # total_cost split per model and per request tag "key=value" (e.g. `arm=b`, `tenant=x`;
    # the same bounded series as requests_by_tag).
    cost_by_model: dict[str, float] = Field(default_factory=dict)
    cost_by_tag: dict[str, float] = Field(default_factory=dict)
    # "key=value" of request tags -> completed, failed, slo_met, slo_total (bounded
    # cardinality: see ControlPlaneOptions.max_tag_series).
    requests_by_tag: dict[str, dict[str, int]] = Field(default_factory=dict)
    policy: str = ""
    policy_switches: int = 0
    retries: int = 0  # attempts started again after a failed attempt
    failovers: int = 0  # retries that moved to another instance after an instance failed
