"""`benchmarks/capacity_diagnosis.py`: capacity probes read back from a matrix cell cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.capacity_diagnosis import diagnose, mean_prompts
from sage_cp_plugin.sim.presets import get_preset


def cell(ttfts: list[float], cached: float, failed: int = 0) -> dict[str, object]:
    return {
        "stats": {
            "requests": len(ttfts),
            "preemptions": 2,
            "failed": failed,
            "cached_prompt_fraction": cached,
            "ttft_ms": {"p90": max(ttfts)},
            "tpot_ms": {"p90": 20.0},
            "queue_ms": {"p90": 0.0},
        },
        "ttft": ttfts,
        "tpot": [20.0] * len(ttfts),
        "all_completed": failed == 0,
        "slo_breakdown": {
            "counts": {
                "met": sum(t <= 1000 for t in ttfts),
                "ttft_only": sum(t > 1000 for t in ttfts),
                "tpot_only": 0,
                "both": 0,
            }
        },
    }


def write_cells(path: Path, rows: list[tuple[str, int, float, dict[str, object]]]) -> None:
    with path.open("w") as fh:
        for variant, seed, rate, result in rows:
            key = f"w2000|{{}}|{{}}|mooncake|{variant}|{seed}|{rate:.6g}|src=x"
            fh.write(json.dumps({"key": key, "result": result}) + "\n")


def test_probes_judged_pooled_with_prefill_utilisation(tmp_path: Path) -> None:
    cells = tmp_path / "c.cells.jsonl"
    write_cells(
        cells,
        [
            # Saturating probe: not a capacity probe, left out.
            ("round_robin+fifo", 0, 10000.0, cell([50000.0], 0.0)),
            ("round_robin+fifo", 0, 10000.0, cell([50000.0], 0.0)),
            # Meets: 90 % of the pooled TTFTs within 1,000 ms.
            ("kv_aware+fifo", 0, 30.0, cell([300.0] * 9 + [5000.0], 0.1)),
            ("kv_aware+fifo", 1, 30.0, cell([300.0] * 10, 0.2)),
            ("kv_aware+fifo", 2, 30.0, cell([300.0] * 10, 0.0)),
            # Misses on TTFT in one window only, pooled over the seeds.
            ("kv_aware+fifo", 0, 40.0, cell([300.0] * 10, 0.1)),
            ("kv_aware+fifo", 1, 40.0, cell([300.0] * 10, 0.1)),
            ("kv_aware+fifo", 2, 40.0, cell([3000.0] * 10, 0.1)),
            # A lost request fails the probe whatever the latencies.
            ("load_balanced+fifo", 0, 30.0, cell([300.0] * 10, 0.0, failed=1)),
            ("load_balanced+fifo", 1, 30.0, cell([300.0] * 10, 0.0)),
            ("load_balanced+fifo", 2, 30.0, cell([300.0] * 10, 0.0)),
            # A probe without every seed is not reported.
            ("load_balanced+fifo", 0, 40.0, cell([300.0] * 10, 0.0)),
        ],
    )
    doc = diagnose(cells, "mooncake", 2000)
    got = {(r["variant"], r["rate_rps"]): r for r in doc["rows"]}
    assert sorted(got) == [
        ("kv_aware+fifo", 30.0),
        ("kv_aware+fifo", 40.0),
        ("load_balanced+fifo", 30.0),
    ]
    assert got[("kv_aware+fifo", 30.0)]["meets"] is True
    assert got[("kv_aware+fifo", 40.0)]["meets"] is False
    assert got[("load_balanced+fifo", 30.0)]["meets"] is False
    worst = got[("kv_aware+fifo", 40.0)]["seeds"][2]
    assert worst["ttft_only"] == 1.0 and worst["tpot_only"] == 0.0
    assert worst["preemptions_per_request"] == pytest.approx(0.2)
    # rho: rate x uncached prompt tokens x seconds per prefill token / instances.
    prompts = mean_prompts("mooncake", 2000, 3)
    b1 = get_preset("llama-3.1-8b-h100-tp1").b1_us_per_token * 1e-6
    s1 = got[("kv_aware+fifo", 30.0)]["seeds"][1]
    assert s1["prefill_utilisation"] == pytest.approx(30.0 * 0.8 * prompts[1] * b1 / 8)
    # Longer prompts later in the trace: the windows differ, so rho is per window.
    assert prompts[0] < prompts[2]


def test_ideal_queue_orders_and_places_like_a_central_queue() -> None:
    from benchmarks.ideal_queue_bound import service_s, ttfts

    # Two servers; a long job at 0 takes one, a long job at 0 the other; then a long and a
    # short job arrive while both are busy.
    arrivals = [0.0, 0.0, 0.1, 0.2]
    services = [1.0, 1.0, 1.0, 0.1]
    # FCFS: job 2 takes the first free server at 1.0 and job 3 the second, also at 1.0.
    assert ttfts(arrivals, services, 2, sjf=False) == pytest.approx([1.0, 1.0, 1.9, 0.9])
    # One server, shortest first: at 1.0 the short job (queued later) goes before the long.
    assert ttfts(arrivals, services, 1, sjf=True) == pytest.approx([1.0, 2.1, 3.0, 0.9])
    assert ttfts(arrivals, services, 1, sjf=False) == pytest.approx([1.0, 2.0, 2.9, 2.9])
    # A prefill pays a fixed step cost per chunk, and at least one step.
    assert service_s(0, 0.005, 1e-5, 8192) == pytest.approx(0.005)
    assert service_s(8193, 0.005, 1e-5, 8192) == pytest.approx(0.08193 + 0.010)
