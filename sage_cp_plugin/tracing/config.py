"""`TracingConfig`: where spans go and which requests are sampled.

The standard OpenTelemetry variables apply where a field is left unset:
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (turns tracing on), OTEL_EXPORTER_OTLP_TRACES_PROTOCOL /
OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_TRACES_SAMPLER (parent-based ones) and
OTEL_TRACES_SAMPLER_ARG (the ratio), OTEL_SERVICE_NAME, OTEL_SDK_DISABLED; headers, TLS and
timeouts (OTEL_EXPORTER_OTLP_*) are read by the official exporters themselves.

Every setting is checked when tracing is configured (`sage-cp serve` and `sage-cp sim`
check before they start and exit 2), with the setting's name and what is wrong: a bad
value fails at start-up, never as spans silently lost later.
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

Protocol = Literal["grpc", "http"]
DEFAULT_EXCLUDED_PATHS = ("/health", "/metrics")
# OTEL_TRACES_SAMPLER values we honour, as the ratio they mean (None: OTEL_TRACES_SAMPLER_ARG).
# Only parent-based samplers: a caller's sampled/unsampled decision is always kept.
SAMPLERS: dict[str, float | None] = {
    "parentbased_traceidratio": None,
    "parentbased_always_on": 1.0,
    "parentbased_always_off": 0.0,
}
_SCHEMES = {"grpc": ("http", "https", "grpc"), "http": ("http", "https")}


def check_endpoint(endpoint: str, protocol: Protocol, name: str) -> str:
    """`endpoint` if it is a URL the OTLP exporter of `protocol` can use, else ValueError
    naming the setting (`name`) and an example."""
    example = "http://127.0.0.1:4317" if protocol == "grpc" else "http://127.0.0.1:4318"
    schemes = _SCHEMES[protocol]
    hint = f"expected a URL like {example} (scheme {', '.join(schemes)}; a host; a port)"
    if "://" not in endpoint:  # host:port alone would make the gRPC exporter use TLS
        raise ValueError(f"{name}={endpoint!r} is not a URL: {hint}")
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port  # raises ValueError when not a number in 0..65535
    except ValueError:
        raise ValueError(f"{name}={endpoint!r} has a bad port: {hint}") from None
    if parts.scheme not in schemes:
        raise ValueError(
            f"{name}={endpoint!r} has scheme {parts.scheme!r} (OTLP over {protocol}): {hint}"
        )
    if not parts.hostname:
        raise ValueError(f"{name}={endpoint!r} names no host: {hint}")
    if port == 0:
        raise ValueError(f"{name}={endpoint!r} has port 0: {hint}")
    return endpoint.strip()


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

    @field_validator("otlp_traces_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("the OTLP endpoint is empty (leave it unset to use the variable)")
        check_endpoint(v, "grpc", "otlp_traces_endpoint")  # the scheme is checked per protocol
        return v.strip()

    @field_validator("excluded_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"excluded paths must start with '/': {bad}")
        return v

    def endpoint(self) -> str | None:
        """Where spans go; None: tracing off. ValueError: a malformed endpoint (flag or
        variable), or one whose scheme the protocol cannot use."""
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        if self.otlp_traces_endpoint is not None:
            return check_endpoint(
                self.otlp_traces_endpoint, self.protocol(), "otlp_traces_endpoint"
            )
        env = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if env is None or not env.strip():
            return None
        return check_endpoint(env, self.protocol(), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

    def protocol(self) -> Protocol:
        if self.otlp_traces_protocol is not None:
            return self.otlp_traces_protocol
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            env = os.environ.get(name)
            if env is None or not env.strip():
                continue
            if env.strip() not in ("grpc", "http/protobuf"):
                raise ValueError(
                    f"{name}={env!r} is not supported: use grpc or http/protobuf "
                    "(OTLP's http/json is not)"
                )
            return "grpc" if env.strip() == "grpc" else "http"
        return "grpc"

    def ratio(self) -> float:
        if self.sampling_ratio is not None:
            return self.sampling_ratio
        sampler = os.environ.get("OTEL_TRACES_SAMPLER")
        if sampler is not None and sampler.strip():
            name = sampler.strip().lower()
            if name not in SAMPLERS:
                raise ValueError(
                    f"OTEL_TRACES_SAMPLER={sampler!r} is not supported: sampling here is "
                    "parent-based (a caller's decision is kept); use one of "
                    f"{', '.join(SAMPLERS)}, or set the ratio with --trace-sampling-ratio"
                )
            fixed = SAMPLERS[name]
            if fixed is not None:
                return fixed
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

    def check(self) -> str | None:
        """Resolve every setting now (flags, file and OTEL_* variables); the endpoint, or
        None when tracing stays off. ValueError with the reason when one is bad."""
        endpoint = self.endpoint()
        if endpoint is not None:
            self.ratio()
        return endpoint
