"""Configuration of one simulated vLLM instance and of its injected faults (pydantic v2).

Engine coefficients left unset are filled from the named preset (``presets.py``), so
``SimInstanceConfig(preset="llama-3.3-70b-h100-tp4")`` is a complete configuration while every
coefficient can still be overridden one by one. Validation errors name the field and the value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.sim.presets import DEFAULT_PRESET, PRESETS, get_preset
from sage_cp_plugin.types import ExecutionInstanceType

# Defaults shown to type checkers; at validation time the chosen preset supplies them.
_D = PRESETS[DEFAULT_PRESET]

_LLAMA3_CONTEXT = 131072  # default max_model_len of the preset models, as vLLM would derive it

SimRole = Literal["general", "prefill", "decode", "embedding"]
_ROLE_TYPES: dict[str, ExecutionInstanceType] = {
    "general": ExecutionInstanceType.GENERAL,
    "prefill": ExecutionInstanceType.PREFILLING,
    "decode": ExecutionInstanceType.DECODING,
    "embedding": ExecutionInstanceType.EMBEDDING,
}

# Fields a preset supplies when the caller leaves them out.
_PRESET_FIELDS = (
    "b0_ms",
    "b1_us_per_token",
    "b2_us_per_seq",
    "num_kv_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
)


class FaultConfig(BaseModel):
    """Failures a simulated instance injects; all off by default.

    Probabilistic faults draw from the instance's seeded RNG, so a test run is repeatable.
    ``slow_ms`` and ``retry_after_s`` are wall-of-the-event-loop durations and are NOT multiplied
    by ``time_scale``: they model the network/server, not the engine.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="fraction answered HTTP 500")
    rate_limit_rate: float = Field(0.0, ge=0.0, le=1.0, description="fraction answered HTTP 429")
    retry_after_s: float = Field(1.0, ge=0.0, description="Retry-After of the 429 answers")
    slow_ms: float = Field(0.0, ge=0.0, description="extra delay before answering")
    hang: bool = Field(
        False, description="accept requests and answer none until this fault is cleared"
    )
    disconnect_after_chunks: int | None = Field(
        None, ge=0, description="drop the connection after this many SSE chunks"
    )
    malformed_json: bool = Field(False, description="answer 200 with invalid JSON")
    truncated_sse: bool = Field(False, description="end streams mid-JSON and without [DONE]")
    metrics_garbage: bool = Field(False, description="/metrics returns non-Prometheus text")
    health_status: int = Field(200, ge=100, le=599, description="status code of /health")


class SimInstanceConfig(BaseModel):
    """One simulated vLLM server: what it serves, how fast its engine is, what goes wrong."""

    model_config = ConfigDict(extra="forbid")

    served_model_names: list[str] = Field(default_factory=lambda: ["sim-model"], min_length=1)
    role: SimRole = "general"
    preset: str = DEFAULT_PRESET
    b0_ms: float = Field(_D.b0_ms, ge=0.0, description="fixed cost of one engine step")
    b1_us_per_token: float = Field(
        _D.b1_us_per_token, ge=0.0, description="cost per prefill token in a step"
    )
    b2_us_per_seq: float = Field(
        _D.b2_us_per_seq, ge=0.0, description="cost per decoding sequence in a step"
    )
    request_overhead_ms: float = Field(
        0.0,
        ge=0.0,
        description="the API server's own time per request before the engine queues it "
        "(HTTP, tokenization): counted in TTFT, runs beside the engine's steps",
    )
    max_num_seqs: int = Field(_D.max_num_seqs, ge=1)
    max_num_batched_tokens: int = Field(
        _D.max_num_batched_tokens, ge=1, description="chunked-prefill token budget/step"
    )
    num_kv_blocks: int = Field(_D.num_kv_blocks, ge=1)
    block_size: int = Field(16, ge=1)
    max_model_len: int | None = Field(
        None, ge=1, description="longest prompt+output; default: min(KV capacity, 131072)"
    )
    enable_prefix_caching: bool = True
    scheduling_policy: Literal["fcfs", "priority"] = Field(
        "fcfs",
        description="vLLM's --scheduling-policy: 'priority' orders the waiting queue by the "
        "request's integer priority (lower first), then arrival",
    )
    time_scale: float = Field(
        1.0, ge=0.0, description="multiplies every simulated duration; 0 = zero latency"
    )
    seed: int = 0
    embedding_dim: int = Field(384, ge=1)
    kv_transfer_us_per_token: float = Field(
        2.0, ge=0.0, description="PD: time to pull one token's KV from the prefill instance"
    )
    kv_pin_timeout_s: float = Field(
        30.0, ge=0.0, description="PD: prefill side frees unfetched KV after this long"
    )
    kv_host: str = "127.0.0.1"
    kv_port: int = Field(5600, ge=1, le=65535)
    kv_events_endpoint: str | None = Field(
        None,
        description="publish vLLM KV-cache events on this ZeroMQ address (tcp://host:port)",
    )
    kv_events_replay_endpoint: str | None = Field(
        None, description="serve replays of missed KV-event batches on this address"
    )
    kv_events_topic: str = ""
    default_max_tokens: int = Field(16, ge=1)
    engine_id: str | None = None
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset", DEFAULT_PRESET)
        if not isinstance(name, str):
            return data  # the field validator reports the wrong type
        try:
            preset = get_preset(name)
        except ConfigurationError as exc:
            raise ValueError(f"preset={name!r}: {exc}") from None
        filled = dict(data)
        for key in _PRESET_FIELDS:
            if filled.get(key) is None:
                filled[key] = getattr(preset, key)
        return filled

    @model_validator(mode="after")
    def _check_lengths(self) -> SimInstanceConfig:
        capacity = self.num_kv_blocks * self.block_size
        if self.max_model_len is not None and self.max_model_len > capacity:
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the KV cache capacity "
                f"({self.num_kv_blocks} blocks x {self.block_size} = {capacity} tokens)"
            )
        if len(set(self.served_model_names)) != len(self.served_model_names):
            raise ValueError(f"served_model_names={self.served_model_names!r} has duplicates")
        return self

    @property
    def model_len(self) -> int:
        """Longest prompt + output the instance accepts."""
        capacity = self.num_kv_blocks * self.block_size
        return self.max_model_len or min(capacity, _LLAMA3_CONTEXT)

    @property
    def instance_type(self) -> ExecutionInstanceType:
        """The control plane's name for this role (`prefill` -> `prefilling`, ...)."""
        return _ROLE_TYPES[self.role]

    @property
    def model_name(self) -> str:
        """The name vLLM reports in metric labels: the first served name."""
        return self.served_model_names[0]

    @property
    def is_embedding(self) -> bool:
        return self.role == "embedding"
