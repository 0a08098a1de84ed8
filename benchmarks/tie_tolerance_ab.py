"""prefix_aware's tie rule, one decode step (`score="ttft"`, main's default until session 11)
against the tolerance from the request's objectives (`score="ttft_headroom"`,
`routing/tie_tolerance.py`), with round_robin as the baseline, on the matrix's cells.

Everything as in `bench_matrix.py`: the same windows (evenly spaced, one per seed), fleet, SLO
and replay setup, rates that are fractions of the sustainable throughput the matrix measured
(its cell cache). A cell's figures are the matrix's: the mean over seeds of each seed's P90
TTFT and goodput, as ratios to round_robin's means on the same seeds and rate; verdict as
matrix.md (win: P90 TTFT <= 0.97x and goodput >= 0.98x; loss: > 1.03x or < 0.98x).

Replays are deterministic (virtual clock), so round_robin and `score="ttft"` are read from the
matrix's cell cache when it holds that cell under any decision-source hash (the cached copies
under different hashes are identical to the digit: no decision changed between them), else
replayed. Every replay of this script is appended to `<out>.cells.jsonl` (resumable).

Run: ``python -m benchmarks.tie_tolerance_ab --traces azure_code --loads 0.7 1.1``;
``--report-only`` writes `<out>.{json,md}` from the rows collected.
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
from sage_cp_plugin.virtual.compare import BASELINE
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.provenance import provenance, provenance_line
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.virtual.steady import steady_stats

# (name in the tables, router, router options); the first is the baseline.
VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("round_robin", "round_robin", {}),
    ("prefix_aware(score=ttft)", "prefix_aware", {"score": "ttft"}),
    ("prefix_aware(score=ttft_headroom)", "prefix_aware", {"score": "ttft_headroom"}),
)
# Variants the matrix's cache holds under their matrix name (router+policy).
MATRIX_NAMES = {"round_robin": "round_robin+fifo", "prefix_aware(score=ttft)": "prefix_aware+fifo"}


def _matrix_rows(cache: Path) -> dict[tuple[str, str, int, str], dict[str, float]]:
    """(trace, matrix variant name, seed, rate) -> P90 TTFT and goodput, any source hash."""
    out: dict[tuple[str, str, int, str], dict[str, float]] = {}
    if not cache.exists():
        return out
    for line in cache.open():
        d = json.loads(line)
        k = d["key"].split("|")
        st = d["result"].get("stats", {})
        if len(k) < 8 or "ttft_ms" not in st:
            continue
        out[(k[3], k[4], int(k[5]), k[6])] = {
            "p90": st["ttft_ms"]["p90"],
            "good": st["goodput_rps"],
        }
    return out


def replay(trace: str, router: str, options: dict[str, str], seed: int, rate: float) -> Any:
    setup = bm._SETUPS[trace]
    config = CoordinatorConfig(
        router=router, router_options=options, policy=BASELINE.policy, **setup.coordinator
    )
    fleet = InProcessFleet(setup.members(seed), direct=setup.direct)
    r = run_replay(setup.workload(seed, rate), fleet, config, prompt_seed=seed)
    st = steady_stats(r)
    return {"p90": st["ttft_ms"]["p90"], "good": st["goodput_rps"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--traces", nargs="+", choices=bm.TRACES, default=list(bm.TRACES))
    p.add_argument("--loads", type=float, nargs="+", default=list(bm.LOADS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS])
    p.add_argument("--cache", default=str(bm.RESULTS / "matrix.cells.jsonl"))
    p.add_argument("--out", default="tie_tolerance_s11")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    out = bm.RESULTS / a.out
    cells = out.with_suffix(".cells.jsonl")
    done = [json.loads(x) for x in cells.open()] if cells.exists() else []
    have = {(r["trace"], r["variant"], r["seed"], f"{r['rate']:.6g}") for r in done}
    matrix = _matrix_rows(Path(a.cache))
    if not a.report_only:
        for trace in a.traces:
            cap = sustainable_rps(Path(a.cache), trace, 2000, 3)
            bm._SETUPS[trace], _ = bm.make_setup(trace, 2000, 3, {}, {})
            for load in a.loads:
                rate = load * cap
                for name, router, options in VARIANTS:
                    if name not in a.variants:
                        continue
                    for seed in range(a.seeds):
                        key = (trace, name, seed, f"{rate:.6g}")
                        if key in have:
                            continue
                        cached = matrix.get((trace, MATRIX_NAMES.get(name, ""), seed, key[3]))
                        res = cached or replay(trace, router, options, seed, rate)
                        row = {
                            "trace": trace,
                            "load": load,
                            "variant": name,
                            "seed": seed,
                            "rate": rate,
                            **res,
                            "from": "matrix cache" if cached else "replayed",
                            "environment": provenance(),
                        }
                        done.append(row)
                        have.add(key)
                        with cells.open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        print(json.dumps({k: row[k] for k in list(row)[:7]}), flush=True)
    write(done, out)
    return 0


def table(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trace x load: each variant's means over seeds and ratios to round_robin's."""
    by: dict[tuple[str, float], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in done:
        by.setdefault((r["trace"], round(r["load"], 2)), {}).setdefault(r["variant"], {})[
            r["seed"]
        ] = r
    rows = []
    for (trace, load), vs in sorted(by.items()):
        base = vs.get(VARIANTS[0][0], {})
        for name, _, _ in VARIANTS:
            mine = vs.get(name, {})
            seeds = sorted(set(mine) & set(base))
            if not seeds:
                continue
            p90 = float(np.mean([mine[s]["p90"] for s in seeds]))
            good = float(np.mean([mine[s]["good"] for s in seeds]))
            bp90 = float(np.mean([base[s]["p90"] for s in seeds]))
            bgood = float(np.mean([base[s]["good"] for s in seeds]))
            x = {"ttft_ms_p90": p90 / bp90, "goodput_rps": good / bgood if bgood else None}
            rows.append(
                {
                    "trace": trace,
                    "load": load,
                    "variant": name,
                    "seeds": seeds,
                    "ttft_p90_ms": p90,
                    "goodput_rps": good,
                    "ttft_p90_x": x["ttft_ms_p90"],
                    "goodput_x": x["goodput_rps"],
                    "verdict": bm.verdict(x),
                    "line_met": x["ttft_ms_p90"] <= bm.LOSS_TTFT
                    and (x["goodput_rps"] or 0.0) >= bm.MIN_GOODPUT,
                }
            )
    return rows


def write(done: list[dict[str, Any]], out: Path) -> None:
    rows = table(done)
    out.with_suffix(".json").write_text(
        json.dumps({"description": __doc__, "cells": rows}, indent=1) + "\n"
    )
    lines = [
        "# prefix_aware's tie rule: one decode step vs the objectives' headroom (session 11)",
        "",
        "Generated by `benchmarks/tie_tolerance_ab.py` (method in its docstring). Fleet: 8 x",
        "Llama-3.1-8B/H100 simulated, 8192 KV blocks, 64 in flight each; SLO P90 TTFT 1000 ms,",
        "P90 TPOT 100 ms (every request carries both); windows of 2,000 requests evenly spaced",
        "(one per seed); load = fraction of the sustainable throughput the matrix measured.",
        "x = ratio to round_robin's mean over the same seeds, rate and windows. 'line' = the",
        "issue-10 line for the default router: P90 TTFT <= 1.03x and goodput >= 0.98x.",
        "",
        "| trace | load | variant | seeds | P90 TTFT ms (x) | goodput req/s (x) | verdict | line |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = "-" if r["goodput_x"] is None else f"{r['goodput_x']:.3f}x"
        lines.append(
            f"| {r['trace']} | {r['load']:.0%} | `{r['variant']}` | {len(r['seeds'])} | "
            f"{r['ttft_p90_ms']:.0f} ({r['ttft_p90_x']:.3f}x) | {r['goodput_rps']:.1f} ({g}) | "
            f"{r['verdict']} | {'met' if r['line_met'] else 'MISSED'} |"
        )
    sources: dict[str, int] = {}
    for r in done:
        sources[r["from"]] = sources.get(r["from"], 0) + 1
    lines += ["", "Replays by source: " + "; ".join(f"{n} {k}" for k, n in sorted(sources.items()))]
    envs = [r["environment"] for r in done if r.get("environment") and r["from"] == "replayed"]
    if envs:
        lines += ["", "Last replay written on: " + provenance_line(envs[-1])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """P90 TTFT and goodput ratios to round_robin per cell, one bar per rule, with the
    issue-10 line (1.03x, 0.98x) drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rules = [v[0] for v in VARIANTS[1:]]
    cells = sorted({(r["trace"], r["load"]) for r in rows})
    fig, axes = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        got = {(r["trace"], r["load"]): r for r in rows if r["variant"] == rule}
        xs = [k + i * width for k in range(len(cells))]
        for ax, key in zip(axes, ("ttft_p90_x", "goodput_x"), strict=True):
            ax.bar(xs, [got[c][key] if c in got else 0.0 for c in cells], width, label=rule)
    axes[0].axhline(bm.LOSS_TTFT, color="k", lw=0.8, ls="--")
    axes[1].axhline(bm.MIN_GOODPUT, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("P90 TTFT / round_robin")
    axes[1].set_ylabel("goodput / round_robin")
    axes[1].set_xticks([k + 0.4 - width / 2 for k in range(len(cells))])
    axes[1].set_xticklabels([f"{t}\n{load:.0%}" for t, load in cells], fontsize=7)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
