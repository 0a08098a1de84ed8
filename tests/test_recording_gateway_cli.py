"""`sage-cp serve --request-log DIR`: the gateway process records what it served."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from sage_cp_plugin.recording.importer import read_request_log
from tests.test_gateway_support import start_gateway_process, write_config


def test_serve_request_log_flag_records_gateway_requests(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fleet.yaml", time_scale=0.05)
    log = tmp_path / "log"
    gp = start_gateway_process("--config", str(cfg), "--request-log", str(log))
    try:
        with httpx.Client(base_url=gp.url, timeout=30) as c:
            for i in range(3):
                body = {"model": "sim-model", "prompt": f"hello number {i}", "max_tokens": 3}
                assert c.post("/v1/completions", json=body).status_code == 200
        gp.proc.send_signal(signal.SIGTERM)
        assert gp.proc.wait(30) == 0  # the manager's stop writes what is queued
    finally:
        if gp.proc.poll() is None:
            gp.proc.kill()
            gp.proc.wait(10)
    recs = read_request_log(log)
    assert len(recs) == 3 and {r.source for r in recs} == {"gateway"}
    assert all(r.output_tokens == 3 and r.decision.instance_id for r in recs)
    assert all(r.prompt is None for r in recs)
    assert "hello" not in "".join(p.read_text() for p in log.iterdir())
