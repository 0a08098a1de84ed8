"""Bad tracing settings are refused at start-up with the setting's name and the reason
(docs/tracing.md, "Configuration"): through the real `sage-cp serve`/`sim` argument parser
and settings code, and, for a few, the real command in a subprocess (exit 2, nothing
started)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sage_cp_plugin.entrypoints.cli import build_parser

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.tracing import TracingConfig, validate
from sage_cp_plugin.tracing import cli as tracing_cli
from tests.redis_server import free_port

URL = "http://127.0.0.1:4317"


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(k)


def serve_config(*flags: str) -> TracingConfig:
    args = build_parser().parse_args(["serve", *flags])
    return tracing_cli.config_from(args, None)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--otlp-traces-endpoint", URL, "--trace-sampling-ratio", "1.5"], {},
         "--trace-sampling-ratio: Input should be less than or equal to 1"),
        (["--otlp-traces-endpoint", URL, "--trace-sampling-ratio", "-0.1"], {},
         "--trace-sampling-ratio: Input should be greater than or equal to 0"),
        (["--otlp-traces-endpoint", "localhost4317"], {}, "'localhost4317' is not a URL"),
        (["--otlp-traces-endpoint", "http://127.0.0.1:99999"], {}, "has a bad port"),
        (["--otlp-traces-endpoint", "http://:4317"], {}, "names no host"),
        (["--otlp-traces-endpoint", "ftp://127.0.0.1:4317"], {}, "has scheme 'ftp'"),
        (["--otlp-traces-endpoint", "grpc://127.0.0.1:4318", "--otlp-traces-protocol", "http"],
         {}, "has scheme 'grpc' (OTLP over http)"),
        (["--otlp-traces-endpoint", URL, "--trace-exclude-path", "health"], {},
         "--trace-exclude-path: excluded paths must start with '/'"),
        (["--trace-sampling-ratio", "0.5"], {}, "no collector to export to"),
        (["--otlp-traces-endpoint", URL], {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
         "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported"),
        (["--otlp-traces-endpoint", URL], {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
         "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='udp' is not supported"),
        (["--otlp-traces-endpoint", URL], {"OTEL_TRACES_SAMPLER_ARG": "lots"},
         "OTEL_TRACES_SAMPLER_ARG='lots' is not a number"),
        (["--otlp-traces-endpoint", URL], {"OTEL_TRACES_SAMPLER_ARG": "2"},
         "OTEL_TRACES_SAMPLER_ARG='2' is not within [0, 1]"),
        (["--otlp-traces-endpoint", URL], {"OTEL_TRACES_SAMPLER": "always_on"},
         "OTEL_TRACES_SAMPLER='always_on' is not supported"),
        ([], {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "127.0.0.1"},
         "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='127.0.0.1' is not a URL: expected a URL like http://127.0.0.1:4317"),
    ],
)  # fmt: skip
def test_bad_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigurationError) as err:
        serve_config(*flags)
    assert message in str(err.value) and str(err.value).startswith("tracing: ")


def test_good_settings_pass_and_standard_samplers_map_to_a_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = serve_config("--otlp-traces-endpoint", "grpc://collector.local:4317")
    assert cfg.check() == "grpc://collector.local:4317" and cfg.ratio() == 1.0
    cfg = serve_config("--otlp-traces-endpoint", "https://tempo.example:4318/v1/traces",
                       "--otlp-traces-protocol", "http", "--trace-sampling-ratio", "0.25")  # fmt: skip
    assert cfg.check() is not None and cfg.protocol() == "http" and cfg.ratio() == 0.25
    assert serve_config().check() is None  # nothing asked: off, and no error
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    assert serve_config("--otlp-traces-endpoint", URL).ratio() == 0.0
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    assert serve_config("--otlp-traces-endpoint", URL).ratio() == 0.5
    # Deliberately off: flags without an endpoint are not an error then.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert serve_config("--trace-sampling-ratio", "0.5").check() is None
    assert validate(serve_config("--otlp-traces-endpoint", URL)) is False


def test_config_file_endpoint_is_checked_when_loaded() -> None:
    with pytest.raises(ValueError, match="otlp_traces_endpoint='collector' is not a URL"):
        TracingConfig(otlp_traces_endpoint="collector")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["serve", "--port", "0", "--otlp-traces-endpoint", URL], {"OTEL_TRACES_SAMPLER_ARG": "lots"},
         "error: tracing: OTEL_TRACES_SAMPLER_ARG='lots' is not a number"),
        (["serve", "--port", "0", "--workers", "2", "--otlp-traces-endpoint", "localhost:4317"],
         {}, "error: tracing: --otlp-traces-endpoint: otlp_traces_endpoint='localhost:4317' is not a URL"),
        (["sim", "--port", str(free_port()), "--otlp-traces-endpoint", URL],
         {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
         "error: tracing: OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported"),
    ],
)  # fmt: skip
def test_commands_exit_2_before_starting(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", *argv],
        capture_output=True, text=True, timeout=120, env={**clean, **env},
    )  # fmt: skip
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "listening" not in out.stdout
