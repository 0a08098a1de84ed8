"""Replay one matrix cell (trace x router x window x load) outside the matrix, to check a
result on windows other than the matrix's own: the same fleet, SLO and replay job as
`bench_matrix.py`, windows spread evenly by the same rule over `--windows` of them (so
`--windows 5` adds two windows between the matrix's three), and the load a fraction of the
sustainable throughput the matrix measured (read from its cell cache, so the rate is the
matrix's own). Prints one JSON line per replay.

Run: ``python -m benchmarks.matrix_one_cell azure_code prefix_aware --load 1.1 --windows 5
--window-index 1 3``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import bench_matrix as bm
from sage_cp_plugin.virtual.compare import BASELINE, build_variants


def sustainable_rps(cache: Path, trace: str, window: int, seeds: int) -> float:
    """The matrix's measured sustainable throughput of `trace` (mean over its seeds)."""
    c = bm.CellCache(cache, f"w{window}|{{}}|{{}}", report_only=True)
    keys = [c.key((trace, BASELINE, s, bm.SATURATING_RPS)) for s in range(seeds)]
    missing = [k for k in keys if k not in c.done]
    if missing:
        raise SystemExit(
            f"{cache}: the matrix has not measured {trace}'s throughput ({missing[0]})"
        )
    return float(np.mean([c.done[k]["saturated_rps"] for k in keys]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("trace", choices=bm.TRACES)
    p.add_argument("routers", nargs="+", help="routers to replay (round_robin is the baseline)")
    p.add_argument("--load", type=float, required=True, help="fraction of sustainable throughput")
    p.add_argument("--windows", type=int, default=3, help="windows spread over the trace")
    p.add_argument("--window-index", type=int, nargs="+", help="which of them (default all)")
    p.add_argument("--window", type=int, default=2000, help="requests per window")
    p.add_argument("--matrix-seeds", type=int, default=3, help="seeds of the matrix run")
    p.add_argument("--cache", default=str(bm.RESULTS / "matrix.cells.jsonl"))
    a = p.parse_args(argv)
    rate = a.load * sustainable_rps(Path(a.cache), a.trace, a.window, a.matrix_seeds)
    setup, offsets = bm.make_setup(a.trace, a.window, a.windows, {}, {})
    bm._SETUPS[a.trace] = setup
    variants = {v.router: v for v in build_variants(a.routers, []) if v.compares != "policy"}
    for j in a.window_index or range(a.windows):
        for router in a.routers:
            if router not in variants:
                p.error(f"unknown router {router!r}")
            s = bm._job((a.trace, variants[router], j, rate))["stats"]
            row = {
                "trace": a.trace,
                "router": router,
                "window": f"{j} of {a.windows} (row {offsets[j]})",
                "rate_rps": round(rate, 3),
                "ttft_p50_ms": round(s["ttft_ms"]["p50"]),
                "ttft_p90_ms": round(s["ttft_ms"]["p90"]),
                "tpot_p90_ms": round(s["tpot_ms"]["p90"], 1),
                "goodput_rps": round(s["goodput_rps"], 2),
                "slo_attainment": round(s["slo_attainment"], 4),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
