"""Fuzzing the gateway from its own OpenAPI description with schemathesis (positive and
negative inputs): no generated input may produce a 5xx, and the process stays up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.conftest import console_script
from tests.test_gateway_support import start_gateway_process, write_config


def test_schemathesis_finds_no_5xx_and_the_gateway_stays_up(tmp_path: Path) -> None:
    st = console_script("schemathesis")  # a dev dependency: missing is a failure, not a skip
    cfg = write_config(tmp_path / "fleet.yaml", time_scale=0.0)
    gp = start_gateway_process("--config", str(cfg), "--max-body-bytes", "65536")
    try:
        out = subprocess.run(
            [
                st, "run", f"{gp.url}/openapi.json",
                "--checks", "not_a_server_error,content_type_conformance",
                "--max-examples", "25", "--seed", "7",
                "--request-timeout", "20", "--workers", "2",
                "--exclude-path", "/metrics",
                "--suppress-health-check", "all",
            ],
            # Bounded by examples, not seconds: on a busy machine a time limit generated no case at
            # all. The timeout only guards against a hang.
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )  # fmt: skip
        report = out.stdout[-12000:] + out.stderr[-2000:]
        assert out.returncode == 0, report
        assert "passed" in out.stdout.lower() or "no issues" in out.stdout.lower(), report
        print(out.stdout[-3000:])
        assert gp.proc.poll() is None, "the gateway died under fuzzing"
        assert httpx.get(f"{gp.url}/health", timeout=5).status_code == 200
        ok = httpx.post(
            f"{gp.url}/v1/completions",
            json={"model": "sim-model", "prompt": "still here", "max_tokens": 2},
            timeout=10,
        )
        assert ok.status_code == 200
    finally:
        gp.proc.terminate()
        gp.proc.wait(30)
