"""`TracingConfig`: where spans go and which requests are sampled.

The standard OpenTelemetry variables apply where a field is left unset:
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (turns tracing on), OTEL_EXPORTER_OTLP_TRACES_PROTOCOL /
OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_TRACES_SAMPLER_ARG (the ratio), OTEL_SERVICE_NAME,
OTEL_SDK_DISABLED; headers, TLS and timeouts (OTEL_EXPORTER_OTLP_*) are read by the
official exporters themselves.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Protocol = Literal["grpc", "http"]
DEFAULT_EXCLUDED_PATHS = ("/health", "/metrics")


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # OTLP collector (Jaeger, Tempo, Phoenix, an OpenTelemetry Collector). None: the
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variable; neither: tracing stays off.
    otlp_traces_endpoint: str | None = None
    otlp_traces_protocol: Protocol | None = None  # None: env, else grpc (as vLLM)
    # Parent-based: a caller's sampled/unsampled decision is kept; new traces are sampled
    # with this probability. None: OTEL_TRACES_SAMPLER_ARG, else 1.0.
    sampling_ratio: float | None = Field(None, ge=0.0, le=1.0)
    excluded_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDED_PATHS))
    # Prompts and generated text on spans (gen_ai.prompt / gen_ai.completion events).
    capture_content: bool = False
    service_name: str | None = None  # None: OTEL_SERVICE_NAME, else "sage-cp"
    # Also install our provider as OpenTelemetry's global one (for other instrumentation in
    # the same process). Library code never does this unless asked.
    set_global: bool = False

    @field_validator("otlp_traces_protocol", mode="before")
    @classmethod
    def _protocol(cls, v: object) -> object:
        return "http" if v == "http/protobuf" else v

    @field_validator("excluded_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"excluded paths must start with '/': {bad}")
        return v

    def endpoint(self) -> str | None:
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        return self.otlp_traces_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

    def protocol(self) -> Protocol:
        if self.otlp_traces_protocol is not None:
            return self.otlp_traces_protocol
        env = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
        )
        if env.strip() not in ("grpc", "http/protobuf"):
            raise ValueError(f"OTLP protocol {env!r} is not supported: use grpc or http/protobuf")
        return "grpc" if env.strip() == "grpc" else "http"

    def ratio(self) -> float:
        if self.sampling_ratio is not None:
            return self.sampling_ratio
        env = os.environ.get("OTEL_TRACES_SAMPLER_ARG")
        if env is None:
            return 1.0
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={env!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={env!r} is not within [0, 1]")
        return value
