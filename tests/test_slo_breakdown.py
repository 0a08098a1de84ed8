"""`benchmarks/slo_breakdown.py`: steady-state requests split by the objective they missed."""

from __future__ import annotations

from benchmarks.slo_breakdown import slo_breakdown
from sage_cp_plugin.virtual.runner import RequestOutcome


def outcome(
    i: int, ttft: float, tpot: float | None, tokens: int, state: str = "completed"
) -> RequestOutcome:
    return RequestOutcome(
        index=i,
        arrival_s=float(i),
        input_tokens=100,
        output_tokens=tokens,
        slo_class=None,
        tenant=None,
        priority=0,
        has_slo=True,
        state=state,
        completion_tokens=tokens,
        ttft_ms=ttft,
        tpot_ms=tpot,
    )


def test_each_request_counted_once_by_the_objectives_it_missed() -> None:
    # Arrivals 0..10: the steady interval (middle 80 %) keeps 1..9.
    rows = [
        outcome(0, 5000, 500, 8),  # outside the steady interval: not counted
        outcome(1, 500, 50, 8),  # met
        outcome(2, 1500, 50, 8),  # TTFT only
        outcome(3, 500, 150, 8),  # TPOT only, short output
        outcome(4, 500, 150, 300),  # TPOT only, long output
        outcome(5, 1500, 150, 300),  # both
        outcome(6, 500, None, 1),  # one token: no TPOT, met
        outcome(7, 500, 50, 8, state="failed"),  # not completed: not counted
        outcome(8, 1000, 100, 20),  # exactly at the objectives: met
        outcome(9, 999, 101, 20),  # TPOT only
        outcome(10, 5000, 500, 8),  # outside
    ]
    bd = slo_breakdown(rows, 1000.0, 100.0)
    assert bd["requests"] == 8
    assert bd["counts"] == {"met": 3, "ttft_only": 1, "tpot_only": 3, "both": 1}
    assert list(bd["by_output"]) == ["1-16", "17-64", "257-1024"]
    assert bd["by_output"]["1-16"]["tpot_only"] == 1
    assert bd["by_output"]["17-64"] == {
        "met": 1,
        "ttft_only": 0,
        "tpot_only": 1,
        "both": 0,
        "tpot_p50_ms": 101,
    }
    assert bd["by_output"]["257-1024"]["both"] == 1


def test_no_outcomes() -> None:
    assert slo_breakdown([], 1000.0, 100.0)["requests"] == 0
