"""`ControlPlaneOptions`: every setting of the coordinator, validated, with its one default.

`ControlPlaneManager(...)` builds one from its keyword arguments and `ControlPlaneConfig`
(files, the gateway, the batch job, the SAGE service) extends it with the fleet, so a
setting reachable from code is reachable from a file and no default differs between them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sage_cp_plugin.elastic.controller import AutoscalingSettings
from sage_cp_plugin.elastic.discovery import DiscoveryConfig
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.health import HealthConfig
from sage_cp_plugin.quotas import QuotaConfig
from sage_cp_plugin.rate_limits import RateLimitConfig
from sage_cp_plugin.recording.config import RequestLogConfig
from sage_cp_plugin.scrape import ScrapeConfig
from sage_cp_plugin.tracing.config import TracingConfig
from sage_cp_plugin.types import PDSeparationConfig


class ControlPlaneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduling_policy: str = "adaptive"
    routing_strategy: str = "prefix_aware"
    policy_options: dict[str, Any] = Field(default_factory=dict)
    router_options: dict[str, Any] = Field(default_factory=dict)
    # Tag requests by phase and prefer prefill/decode-specialised instances accordingly
    # (a no-op on a fleet of general instances). `pd` refines it; None: defaults.
    enable_pd_separation: bool = True
    pd: PDSeparationConfig | None = None
    enable_monitoring: bool = True  # active health probes and /metrics scraping
    # Autoscaling (docs/elastic-fleet.md): `autoscaling` says which model, which actuator
    # (`metrics`, `recommend`, `kubernetes`, `local` or a plugin's) and the scaler's targets.
    enable_auto_scaling: bool = False
    max_pending_requests: int = Field(10_000, gt=0)
    max_attempts: int = Field(3, gt=0)
    retry_backoff_s: float = Field(0.05, ge=0)  # first retry; doubles per attempt, jittered
    # A request still unfinished this long after arrival fails with error_type "timeout",
    # whether it is queued or running.
    request_timeout_s: float = Field(600.0, gt=0)
    health: HealthConfig = Field(default_factory=HealthConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    embedding_batch_size: int = Field(64, gt=0)
    # Extra slots (a fraction of max_concurrent_requests) only urgent requests may use;
    # urgent = priority HIGH or above, or a TTFT objective <= urgent_ttft_ms.
    urgent_headroom: float = Field(0.0, ge=0)
    urgent_ttft_ms: float = Field(500.0, gt=0)
    # Per-instance concurrency limit that adapts to the engine's queueing delay
    # (concurrency_limit.py), so the backlog waits in the coordinator's queue.
    adaptive_concurrency: bool = False
    # With it: keep prefill room on the engines for requests with a TTFT objective while
    # they arrive, and never hold those requests back on the engines' prefill queue
    # (ttft_reserve.py). False: the limit's step-counted gate alone, for every request.
    ttft_reserve: bool = True
    upstream_streaming: bool = True  # stream from vLLM even for non-streaming callers (TTFT)
    result_retention: int = Field(10_000, gt=0)  # finished results kept for get_request_status
    # ... and at most about this many bytes of them: a few large embedding answers must not
    # pin gigabytes (the size is an estimate, embedding_parts.result_bytes).
    result_retention_bytes: int = Field(256 * 1024 * 1024, gt=0)
    # Distinct `tag=value` series counted in metrics; further ones count under "other".
    max_tag_series: int = Field(64, ge=0)
    # Opt-in request log (recording/): one JSONL record per finished request, written off the
    # event loop into rotated, bounded files. None = nothing is recorded.
    request_log: RequestLogConfig | None = None
    # OpenTelemetry request tracing (docs/tracing.md). None = off, unless the process
    # configured it already (`sage-cp serve --otlp-traces-endpoint`, OTEL_* variables).
    tracing: TracingConfig | None = None
    # Requests and tokens per minute per tenant (`user`) and in total (rate_limits.py);
    # None = no limits. Replicas sharing state through Redis share the usage.
    rate_limits: RateLimitConfig | None = None
    # Tokens and cost per tenant over an hour, day or month (quotas.py); None = none.
    quotas: QuotaConfig | None = None

    # Elastic fleet (docs/elastic-fleet.md): discovery sources whose instances join the fleet
    # once `/v1/models` answers and drain when they vanish; how often pending ones are
    # re-probed and drained ones collected.
    discovery: list[DiscoveryConfig] = Field(default_factory=list)
    discovery_interval_s: float = Field(2.0, gt=0)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)

    def pd_config(self) -> PDSeparationConfig:
        return self.pd or PDSeparationConfig(enabled=self.enable_pd_separation)


def validation_message(exc: ValidationError) -> str:
    """One line naming each bad field, what is wrong and the value given."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']} (got {e.get('input')!r})"
        for e in exc.errors()
    )


def build_options(where: str, **settings: Any) -> ControlPlaneOptions:
    """Options from keyword settings (None = the default); a bad one is a ConfigurationError."""
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        return ControlPlaneOptions.model_validate(given)
    except ValidationError as exc:
        raise ConfigurationError(f"{where}: {validation_message(exc)}") from exc
