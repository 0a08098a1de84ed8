"""`sage-cp serve` as a real process: flags, loopback default, bad config, graceful shutdown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.test_gateway_support import start_gateway_process, stream_through_sigterm, write_config


def test_bad_config_is_one_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("scheduling_policy: fifo\nmax_pending_requests: -3\n")
    out = subprocess.run(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "serve", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "max_pending_requests" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "serve", "--config",
         str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "cannot read config file" in out.stderr


def test_serve_flags_and_graceful_shutdown(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fleet.yaml", time_scale=0.2)
    gp = start_gateway_process(
        "--config", str(cfg), "--api-key", "ck", "--max-body-bytes", "5000",
        "--shutdown-timeout", "20", env={"SAGE_CP_ADMIN_KEY": "ak"},
    )  # fmt: skip
    try:
        assert gp.url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        auth = {"authorization": "Bearer ck"}
        with httpx.Client(base_url=gp.url, timeout=30) as c:
            assert c.get("/v1/models").status_code == 401
            assert c.get("/v1/models", headers=auth).status_code == 200
            assert c.get("/admin/status", headers={"authorization": "Bearer ak"}).status_code == 200
            big = {"model": "sim-model", "prompt": "x" * 6000}
            assert c.post("/v1/completions", json=big, headers=auth).status_code == 413
            assert c.get("/openapi.json").json()["openapi"].startswith("3.")

        # A long stream is in flight when SIGTERM arrives: it must finish, whole.
        lines = stream_through_sigterm(gp, auth, read_s=30, start_s=10, finish_s=30)
        assert lines[-1] == "data: [DONE]" and len(lines) == 61, lines[-3:]
        assert gp.proc.wait(20) == 0
        try:  # no longer accepting
            httpx.get(f"{gp.url}/health", timeout=2)
            raise AssertionError("still accepting after shutdown")
        except httpx.ConnectError:
            pass
    finally:
        if gp.proc.poll() is None:
            gp.proc.kill()
            gp.proc.wait()
