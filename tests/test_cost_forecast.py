"""Cost per model and per tag (A/B arm, tenant), and `sage-cp predict`'s forecast/backtest.

The coordinator runs for real against in-process simulators on the virtual clock (the GPU
engines are the only simulated part).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sage_cp_plugin.entrypoints.cli import main

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.forecast import cut_periods, ewma
from sage_cp_plugin.workloads.format import WorkloadRecord
from tests.test_fields import on_virtual_fleet, req, sims


def test_cost_is_split_per_model_and_per_tag() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        a = [
            await m.generate(request=req(tags={"arm": "a"}, model_name="sim-model"))
            for _ in range(2)
        ]
        b = [
            await m.generate(request=req(tags={"arm": "b"}, max_tokens=40, model_name="sim-model"))
        ]
        metrics = m.get_metrics()
        cost_a = sum(r.cost or 0 for r in a)
        cost_b = sum(r.cost or 0 for r in b)
        assert cost_a > 0 and cost_b > 0
        assert metrics.cost_by_tag == pytest.approx({"arm=a": cost_a, "arm=b": cost_b})
        assert metrics.cost_by_model == pytest.approx({"sim-model": cost_a + cost_b})
        assert metrics.total_cost == pytest.approx(cost_a + cost_b)
        # The estimate made when the instance was chosen: price x predicted tokens.
        assert all(r.decision is not None and r.decision.estimated_cost > 0 for r in a + b)

    on_virtual_fleet(sims(1, price_per_1k_tokens=2.0), body)


def test_periods_and_ewma() -> None:
    recs = [WorkloadRecord(arrival_s=t, input_tokens=10, output_tokens=2) for t in range(25)]
    periods = cut_periods(recs, 10.0)
    # 0..24 s: two full periods of 10 s; the partial third one (20..24) is dropped.
    assert [p.requests for p in periods] == [10, 10]
    assert periods[1].input_tokens == 100 and periods[1].output_tokens == 20
    assert ewma([10, 20], 0.5) == 15.0 and ewma([10, 20, 20], 0.5) == 17.5
    assert ewma([3.0], 0.5) == 3.0


def _log(tmp: Path, rates: list[int], period: float) -> Path:
    """A JSONL log with `rates[k]` requests evenly spread over period k (same length mix)."""
    rows = []
    for k, n in enumerate(rates):
        for i in range(n):
            t = k * period + period * i / n
            rows.append({"arrival_s": t, "input_tokens": 200 + 50 * (i % 4), "output_tokens": 40})
    rows.append({"arrival_s": len(rates) * period, "input_tokens": 200, "output_tokens": 40})
    f = tmp / "log.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def test_predict_backtests_on_the_held_back_periods(tmp_path: Path) -> None:
    """A flat load forecasts itself; GPU-hours follow the request count at one mix; cost is
    the busy time at the GPU-hour price."""
    log = _log(tmp_path, [300, 300, 300, 300], 60.0)
    out = tmp_path / "p.json"
    argv = ["predict", str(log), "--instances", "2", "--price-per-gpu-hour", "3"]
    argv += ["--period", "60", "--sample", "128", "--json", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["periods"] == 4 and doc["holdout"] == 2
    assert [r["period"] for r in doc["backtest"]] == [2, 3]
    for r in doc["backtest"]:
        assert r["forecast_requests"] == pytest.approx(300)
        assert r["gpu_hours_error"] < 0.05  # same load, same mix: only the measurement noise
    nxt = doc["next_period"]
    # Two instances' GPUs busy for requests / fleet capacity seconds.
    assert nxt["gpu_hours"] == pytest.approx(
        2 * nxt["requests"] / nxt["fleet_capacity_rps"] / 3600, rel=0.05
    )
    assert nxt["cost"] == pytest.approx(3 * nxt["gpu_hours"])


def test_predict_follows_a_level_shift_and_reports_its_error(tmp_path: Path) -> None:
    log = _log(tmp_path, [200, 200, 400, 400], 60.0)
    out = tmp_path / "p.json"
    argv = ["predict", str(log), "--period", "60", "--holdout", "1", "--sample", "128"]
    assert main([*argv, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["backtest"]
    # EWMA (alpha 0.5) of 200, 200, 400 = 300 requests against 400 actual.
    assert row["forecast_requests"] == pytest.approx(300)
    assert 0.15 < row["gpu_hours_error"] < 0.35


def test_predict_refuses_a_log_shorter_than_two_periods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _log(tmp_path, [50], 60.0)
    assert main(["predict", str(log), "--period", "3600"]) == 2
    assert "fewer than 2 full periods of 3600 s" in capsys.readouterr().err
