"""`sage-cp sim calibrate`: the fit recovers a known engine, and a simulator calibrated on
one half of a log reproduces the other half's latencies.

The "real" engine here is the simulator with coefficients unlike any preset (a stand-in for a
real vLLM run, which tests/e2e/test_calibration_e2e.py records on this CPU): the fit sees
only the coordinator's request log, never the coefficients.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.recording import RequestLogRecord
from sage_cp_plugin.recording.calibrate import fit_step_model
from sage_cp_plugin.recording.importer import read_request_log
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual import CoordinatorConfig, InProcessFleet, MemberSpec, run_replay
from sage_cp_plugin.workloads import synthetic

TRUE = {
    "b0_ms": 20.0,
    "b1_us_per_token": 150.0,
    "b2_us_per_seq": 800.0,
    "request_overhead_ms": 15.0,
}


def _record(log: Path, rate: float = 10.0) -> None:
    work = synthetic(
        np.random.default_rng(5), 400, rate=rate, input_tokens=(16, 400), output_tokens=(4, 48)
    )
    members = [
        MemberSpec(
            SimInstanceConfig(seed=i, enable_prefix_caching=False, max_num_seqs=8, **TRUE),
            max_concurrent_requests=8,
        )
        for i in range(2)
    ]
    cfg = CoordinatorConfig(router="round_robin", extra={"request_log": {"path": str(log)}})
    run_replay(work, InProcessFleet(members, direct=True), cfg)


def test_fit_recovers_the_engine_and_the_check_is_within_15_percent(tmp_path: Path) -> None:
    _record(tmp_path / "log")
    fit = fit_step_model(read_request_log(tmp_path / "log"))
    assert fit.b0_ms == pytest.approx(TRUE["b0_ms"], rel=0.2)
    assert fit.b1_us_per_token == pytest.approx(TRUE["b1_us_per_token"], rel=0.3)
    assert fit.b2_us_per_seq == pytest.approx(TRUE["b2_us_per_seq"], rel=0.5)
    # The API server's per-request time is told apart from the per-step cost.
    assert fit.request_overhead_ms == pytest.approx(TRUE["request_overhead_ms"], rel=0.3)
    out = tmp_path / "preset.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "sim", "calibrate",
         str(tmp_path / "log"), "--check", "--max-concurrent", "8", "--max-num-seqs", "8",
         "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["fitted_on"] == "alternate requests by arrival"
    assert res["check"]["requests"] == 200
    for name in ("ttft_ms", "e2e_ms"):
        assert abs(res["check"][name]["p50_error"]) < 0.15, res["check"][name]
    written = json.loads(out.read_text())
    # The settings file is simulator configuration as it stands.
    cfg = SimInstanceConfig(**{k: v for k, v in written.items() if k != "calibration"})
    assert cfg.b0_ms == written["b0_ms"] and cfg.max_num_seqs == 8


def test_too_little_to_fit_is_a_clear_error() -> None:
    recs = [RequestLogRecord(request_id="a", arrival_s=0.0, input_tokens=5)]
    with pytest.raises(ConfigurationError, match="at least 3 completed requests"):
        fit_step_model(recs)


def test_a_decode_window_whose_text_came_at_once_is_left_out_of_the_fit() -> None:
    # Real vLLM (a CI run): one request's 22 tokens of text all arrived in its last chunk,
    # a "time per token" of 0.004 ms among 7-11 ms; weighted by 1/target it set b0 to 0.
    from sage_cp_plugin.recording.calibrate import _outliers

    rng = np.random.default_rng(3)
    steady = rng.normal(8.8, 1.2, 79)
    assert not _outliers(steady).any()  # an ordinary spread keeps every equation
    flagged = _outliers(np.append(steady, 0.004))
    assert flagged[-1] and flagged.sum() == 1
