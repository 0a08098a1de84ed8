"""prefix_aware's two scores side by side on the matrix's cells: least predicted TTFT (the
default) against least added latency (`score="added_latency"`: own TTFT plus the delay its
prefill adds to the sequences running there; sage_cp_plugin/routing/added_latency.py), with
round_robin as the baseline.

Everything as in `bench_matrix.py`: the same windows (evenly spaced, one per seed), fleet, SLO
and replay job, and rates that are fractions of the sustainable throughput the matrix measured
(read from its cell cache). round_robin and default prefix_aware results are taken from the
matrix's cell cache when it has them (same key: same decision sources), else replayed; the
added-latency variant is always replayed (it is not a matrix variant). Goodput is summed over
seeds; P90 TTFT is the P90 of the pooled steady-state TTFTs of all seeds (as the matrix's
capacity search pools them; its cells average the per-seed P90s instead, so a ratio here can
differ from matrix.md's by a few per cent).

Run: ``python -m benchmarks.added_latency_ab --trace azure_code --loads 0.7 1.1 --seeds 3``.
Writes benchmarks/results/added_latency.{json,md} (rows of earlier runs kept, same key
replaced).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_matrix as bm
from benchmarks.matrix_one_cell import sustainable_rps
from sage_cp_plugin.virtual.compare import BASELINE, ReplayVariant
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.virtual.steady import steady_interval, steady_stats

OUT = bm.RESULTS / "added_latency"


def _summary(r: Any) -> dict[str, Any]:
    """The matrix job's result of one replay (steady stats plus steady TTFT/TPOT lists)."""
    stats = steady_stats(r)
    a, b = steady_interval(r.outcomes)
    mid = [o for o in r.outcomes if a <= o.arrival_s <= b and o.state == "completed"]
    return {
        "stats": stats,
        "ttft": [round(o.ttft_ms, 2) for o in mid if o.ttft_ms is not None],
        "tpot": [round(o.tpot_ms, 3) for o in mid if o.tpot_ms is not None],
    }


def added_latency_job(
    trace: str, seed: int, rate: float, score: str = "added_latency"
) -> dict[str, Any]:
    setup = bm._SETUPS[trace]
    config = CoordinatorConfig(
        router="prefix_aware",
        router_options={"score": score},
        policy=BASELINE.policy,
        **setup.coordinator,
    )
    fleet = InProcessFleet(setup.members(seed), direct=setup.direct)
    return _summary(run_replay(setup.workload(seed, rate), fleet, config, prompt_seed=seed))


def _pooled(runs: list[dict[str, Any]]) -> dict[str, float]:
    ttft = [x for r in runs for x in r["ttft"]]
    tpot = [x for r in runs for x in r["tpot"]]
    return {
        "ttft_p90_ms": float(np.percentile(ttft, 90)),
        "tpot_p50_ms": float(np.percentile(tpot, 50)),
        "tpot_p90_ms": float(np.percentile(tpot, 90)),
        "goodput_rps": float(sum(r["stats"]["goodput_rps"] or 0.0 for r in runs)),
        "slo_attainment": float(np.mean([r["stats"]["slo_attainment"] or 0.0 for r in runs])),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trace", choices=bm.TRACES, required=True)
    p.add_argument("--loads", type=float, nargs="+", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cache", default=str(bm.RESULTS / "matrix.cells.jsonl"))
    a = p.parse_args(argv)
    cap = sustainable_rps(Path(a.cache), a.trace, 2000, 3)
    bm._SETUPS[a.trace], _ = bm.make_setup(a.trace, 2000, 3, {}, {})
    cache = bm.CellCache(Path(a.cache), "w2000|{}|{}", report_only=False)
    doc: dict[str, Any] = (
        json.loads(OUT.with_suffix(".json").read_text())
        if OUT.with_suffix(".json").exists()
        else {"description": __doc__, "rows": {}}
    )
    for load in a.loads:
        rate = load * cap
        runs: dict[str, list[dict[str, Any]]] = {}
        for name in ("round_robin", "prefix_aware"):
            v = BASELINE if name == "round_robin" else ReplayVariant(name, BASELINE.policy)
            runs[name] = []
            for s in range(a.seeds):
                key = cache.key((a.trace, v, s, rate))
                if key in cache.done:
                    runs[name].append(cache.done[key])
                else:
                    runs[name].append(bm._job((a.trace, v, s, rate)))
        runs["prefix_aware(score=added_latency)"] = [
            added_latency_job(a.trace, s, rate) for s in range(a.seeds)
        ]
        # Added latency only among candidates predicted within the request's TTFT objective.
        runs["prefix_aware(score=added_latency_slack)"] = [
            added_latency_job(a.trace, s, rate, "added_latency_slack") for s in range(a.seeds)
        ]
        base = _pooled(runs["round_robin"])
        row = {}
        for name, rs in runs.items():
            m: dict[str, Any] = dict(_pooled(rs))
            m["ttft_p90_x"] = m["ttft_p90_ms"] / base["ttft_p90_ms"]
            m["goodput_x"] = m["goodput_rps"] / base["goodput_rps"] if base["goodput_rps"] else None
            m["goodput_per_seed"] = [r["stats"]["goodput_rps"] for r in rs]
            row[name] = m
        doc["rows"][f"{a.trace}|{load:.2f}|{a.seeds}"] = {
            "trace": a.trace,
            "load": load,
            "rate_rps": rate,
            "seeds": a.seeds,
            "variants": row,
        }
        print(
            json.dumps(
                {
                    "trace": a.trace,
                    "load": load,
                    **{
                        k: (round(v["ttft_p90_x"], 3), v["goodput_x"] and round(v["goodput_x"], 3))
                        for k, v in row.items()
                    },
                }
            ),
            flush=True,
        )
        write(doc)
    return 0


def write(doc: dict[str, Any]) -> None:
    OUT.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# prefix_aware: least TTFT (default) vs least added latency, round_robin baseline",
        "",
        "Generated by `benchmarks/added_latency_ab.py` (see its docstring for the method).",
        "P90 TTFT over the pooled steady-state requests of all seeds (matrix.md averages per-seed P90s);",
        "goodput summed over seeds;",
        "x = ratio to round_robin in the same cell.",
        "",
        "| trace | load | variant | P90 TTFT ms (x) | goodput req/s (x) | TPOT P50 / P90 ms | SLO attainment |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(doc["rows"]):
        r = doc["rows"][key]
        for name, m in r["variants"].items():
            g = "-" if m["goodput_x"] is None else f"{m['goodput_x']:.2f}x"
            lines.append(
                f"| {r['trace']} | {r['load']:.0%} ({r['seeds']} seeds) | `{name}` | "
                f"{m['ttft_p90_ms']:.0f} ({m['ttft_p90_x']:.2f}x) | {m['goodput_rps']:.1f} ({g}) | "
                f"{m['tpot_p50_ms']:.0f} / {m['tpot_p90_ms']:.0f} | {m['slo_attainment']:.2f} |"
            )
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
