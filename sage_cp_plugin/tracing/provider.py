"""Building the TracerProviders (OpenTelemetry is imported only here and only when on)."""

from __future__ import annotations

import os
from typing import Any

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.tracing import state
from sage_cp_plugin.tracing.config import TracingConfig

_MISSING = (
    "tracing needs the OpenTelemetry SDK and OTLP exporters: pip install 'sage-cp-plugin[tracing]'"
)


def enabled() -> bool:
    return state.TRACER is not None


def validate(config: TracingConfig | None) -> bool:
    """Check every tracing setting (flags, file, OTEL_* variables) without building
    anything; True when tracing would be on. ConfigurationError with the reason when a
    setting is bad or the OpenTelemetry packages are missing."""
    try:
        on = (config or TracingConfig()).check() is not None
    except ValueError as exc:
        raise ConfigurationError(f"tracing: {exc}") from None
    if on:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(f"{_MISSING} ({exc})") from None
    return on


def _tracer(config: TracingConfig, exporter: Any, default_service: str, name: str) -> Any:
    """A tracer of a provider of its own; `exporter` (tests) replaces the OTLP one and is
    exported synchronously. None when tracing is off."""
    try:
        endpoint = config.endpoint()
        if exporter is None and endpoint is None:
            return None
        protocol, ratio = config.protocol(), config.ratio()
    except ValueError as exc:
        raise ConfigurationError(f"tracing: {exc}") from None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigurationError(f"{_MISSING} ({exc})") from None
    service = config.service_name or os.environ.get("OTEL_SERVICE_NAME") or default_service
    provider = TracerProvider(
        # The pid tells apart the processes of `serve --workers N` (one service).
        resource=Resource.create({"service.name": service, "process.pid": os.getpid()}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        assert endpoint is not None
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint, protocol)))
    state.PROVIDERS.append(provider)
    if config.set_global:
        trace.set_tracer_provider(provider)
    return provider.get_tracer(name)


def _otlp_exporter(endpoint: str, protocol: str) -> Any:
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=endpoint)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )
    except ImportError as exc:
        raise ConfigurationError(f"{_MISSING} ({exc})") from None
    # The HTTP exporter wants the full URL; a collector's base address gets OTLP's path.
    if not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint)


def configure(config: TracingConfig | None, *, exporter: Any = None) -> bool:
    """Turn the control plane's tracing on (or leave it off); True when on."""
    config = config or TracingConfig()
    state.TRACER = _tracer(config, exporter, "sage-cp", "sage_cp_plugin")
    if state.TRACER is not None:
        from sage_cp_plugin.tracing.logs import install_record_factory

        install_record_factory()
    state.CAPTURE_CONTENT = config.capture_content
    state.EXCLUDED_PATHS = frozenset(config.excluded_paths)
    return state.TRACER is not None


def configure_engine(config: TracingConfig | None, *, exporter: Any = None) -> bool:
    """The simulator's tracer: its engine spans, as vLLM's `--otlp-traces-endpoint`."""
    state.ENGINE_TRACER = _tracer(
        config or TracingConfig(), exporter, "sage-cp-sim", "sage_cp_plugin.sim"
    )
    return state.ENGINE_TRACER is not None


def shutdown() -> None:
    """Flush and close every provider built here; tracing is off afterwards."""
    providers, state.PROVIDERS[:] = list(state.PROVIDERS), []
    state.TRACER = state.ENGINE_TRACER = None
    for p in providers:
        p.shutdown()
