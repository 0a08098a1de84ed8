"""What a vLLM server is to the control plane: its static description, its prefill/decode
roles and the parallel layout it runs (document names)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal, Self

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
)


class PrefillingConfig(StrictModel):
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


class DecodingConfig(StrictModel):
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


class PDSeparationConfig(StrictModel):
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


class ExecutionInstance(StrictModel):
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


class ParallelismConfig(StrictModel):
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
