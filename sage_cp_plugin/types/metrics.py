"""Fleet-wide measurements (document names)."""

from __future__ import annotations

from pydantic import (
    ConfigDict,
    Field,
)

from sage_cp_plugin.types.base import StrictModel


class PerformanceMetrics(StrictModel):
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
