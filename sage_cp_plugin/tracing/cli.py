"""The tracing flags of `sage-cp serve` and `sage-cp sim` (named as vLLM's)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pydantic import ValidationError

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.tracing.config import DEFAULT_EXCLUDED_PATHS, TracingConfig


def add_arguments(p: Any, *, gateway: bool = True) -> None:
    g = p.add_argument_group("tracing (OpenTelemetry, docs/tracing.md)")
    g.add_argument(
        "--otlp-traces-endpoint",
        default=None,
        metavar="URL",
        help="export request traces over OTLP to this collector (Jaeger, Tempo, Phoenix, an "
        "OpenTelemetry Collector), e.g. http://127.0.0.1:4317; default: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else tracing off",
    )
    g.add_argument(
        "--otlp-traces-protocol",
        choices=["grpc", "http"],
        default=None,
        help="OTLP over gRPC (default, as vLLM) or HTTP/protobuf",
    )
    if not gateway:
        return
    g.add_argument(
        "--trace-sampling-ratio",
        type=float,
        default=None,
        metavar="R",
        help="fraction of new traces sampled, 0..1 (parent-based: a caller's decision is "
        "kept); default OTEL_TRACES_SAMPLER_ARG, else 1.0",
    )
    g.add_argument(
        "--trace-exclude-path",
        action="append",
        default=None,
        metavar="PATH",
        help=f"a path never traced (repeatable; default: {' '.join(DEFAULT_EXCLUDED_PATHS)})",
    )
    g.add_argument(
        "--trace-capture-content",
        action="store_true",
        help="put prompts and generated text on spans (off: never recorded)",
    )


def config_from(args: argparse.Namespace, base: TracingConfig | None) -> TracingConfig:
    """Flags over the configuration file's `tracing:` section (flags win). A bad value, or
    a tracing flag with no endpoint to export to, is a ConfigurationError naming the flag."""
    fields = (base or TracingConfig()).model_dump(exclude_unset=True)
    flags = {
        "otlp_traces_endpoint": args.otlp_traces_endpoint,
        "otlp_traces_protocol": args.otlp_traces_protocol,
        "sampling_ratio": getattr(args, "trace_sampling_ratio", None),
        "excluded_paths": getattr(args, "trace_exclude_path", None),
        "capture_content": getattr(args, "trace_capture_content", False) or None,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    fields.update(given)
    try:
        config = TracingConfig.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_FLAGS.get(str(e['loc'][0]), str(e['loc'][0])) if e['loc'] else 'tracing'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigurationError(f"tracing: {problems}") from None
    try:
        on = config.check() is not None
    except ValueError as exc:
        raise ConfigurationError(f"tracing: {exc}") from None
    off_on_purpose = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    stray = [_FLAGS[k] for k in given if k != "otlp_traces_endpoint"]
    if stray and not on and not off_on_purpose:
        raise ConfigurationError(
            f"tracing: {', '.join(stray)} given but no collector to export to: add "
            "--otlp-traces-endpoint URL or set OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
    return config


# Settings by the flag that sets them, for error messages.
_FLAGS = {
    "otlp_traces_endpoint": "--otlp-traces-endpoint",
    "otlp_traces_protocol": "--otlp-traces-protocol",
    "sampling_ratio": "--trace-sampling-ratio",
    "excluded_paths": "--trace-exclude-path",
    "capture_content": "--trace-capture-content",
}
