"""prefix_aware's scores side by side on the matrix's cells: least predicted TTFT (the
default) against its opt-in scores, least added latency (`score="added_latency"`: own TTFT
plus the delay its prefill adds to the sequences running there) and added latency within the
request's TTFT objective (`score="added_latency_slack"`; both in
sage_cp_plugin/routing/added_latency.py), with round_robin as the baseline.

Everything as in `bench_matrix.py`: the same windows (evenly spaced, one per seed), fleet, SLO
and replay job, and rates that are fractions of the sustainable throughput the matrix measured
(read from its cell cache). Every replay goes through the matrix's cell cache (same key rule,
the hash of the decision sources; the opt-in scores under their own variant names): cached
ones are not replayed, new ones are appended, so a cut run resumes. Figures two ways:
pooled (P90 of the pooled steady-state TTFTs of all seeds, as the matrix's capacity search
pools them; goodput summed) and the matrix cell's own (means over seeds of the per-seed P90
and goodput, with matrix.md's win/loss verdict).

Run: ``python -m benchmarks.added_latency_ab --trace azure_code --loads 0.7 1.1 --seeds 3
[--scores added_latency_slack] [--out added_latency]``.
Writes benchmarks/results/<out>.{json,md} (rows of earlier runs kept, same key replaced).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_matrix as bm
from benchmarks.decision_sources import decision_hash
from benchmarks.matrix_one_cell import sustainable_rps
from benchmarks.slo_breakdown import KINDS, slo_breakdown
from sage_cp_plugin.virtual.compare import BASELINE, ReplayVariant
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.provenance import provenance, provenance_line
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
        "slo_breakdown": slo_breakdown(r.outcomes, bm.SLO_TTFT_MS, bm.SLO_TPOT_MS),
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


SCORES = ("added_latency", "added_latency_slack")


def score_name(score: str) -> str:
    return f"prefix_aware(score={score})"


def _cached_run(
    cache: bm.CellCache, trace: str, seed: int, rate: float, score: str | None
) -> dict[str, Any]:
    """One replay, from the matrix's cell cache when there (same key rule: the decision
    sources' hash), else replayed here and appended to the cache, so a cut run resumes.
    `score` None is the default prefix_aware (a matrix variant); "round_robin" the baseline."""
    if score is None or score == "round_robin":
        v = BASELINE if score == "round_robin" else ReplayVariant("prefix_aware", BASELINE.policy)
        key = cache.key((trace, v, seed, rate))
    else:
        src = decision_hash("prefix_aware", BASELINE.policy)
        name = f"{score_name(score)}+{BASELINE.policy}"
        key = f"{cache.tag}|{trace}|{name}|{seed}|{rate:.6g}|src={src}"
    if key not in cache.done:
        if score is None or score == "round_robin":
            res = bm._job((trace, v, seed, rate))
        else:
            res = added_latency_job(trace, seed, rate, score)
        cache.done[key] = res
        with cache.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "result": res}) + "\n")
        print(f"replayed {key}", file=sys.stderr, flush=True)
    return cache.done[key]


def _seed_means(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """The matrix's cell figures: means over seeds of each seed's P90 TTFT and goodput."""
    p90 = [r["stats"].get("ttft_ms", {}).get("p90") for r in runs]
    good = [r["stats"].get("goodput_rps") for r in runs]
    return {
        "ttft_p90_ms_seed_mean": float(np.mean(p90)) if None not in p90 else None,
        "goodput_rps_seed_mean": float(np.mean(good)) if None not in good else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trace", choices=bm.TRACES, required=True)
    p.add_argument("--loads", type=float, nargs="+", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--scores",
        nargs="+",
        choices=SCORES,
        default=list(SCORES),
        help="prefix_aware's opt-in scores to replay next to round_robin and the default",
    )
    p.add_argument("--cache", default=str(bm.RESULTS / "matrix.cells.jsonl"))
    p.add_argument("--out", default="added_latency", help="result file stem in benchmarks/results")
    a = p.parse_args(argv)
    out = bm.RESULTS / a.out
    cap = sustainable_rps(Path(a.cache), a.trace, 2000, 3)
    bm._SETUPS[a.trace], _ = bm.make_setup(a.trace, 2000, 3, {}, {})
    cache = bm.CellCache(Path(a.cache), "w2000|{}|{}", report_only=False)
    doc: dict[str, Any] = (
        json.loads(out.with_suffix(".json").read_text())
        if out.with_suffix(".json").exists()
        else {"description": __doc__, "rows": {}}
    )
    for load in a.loads:
        rate = load * cap
        names = {"round_robin": "round_robin", "prefix_aware": None}
        names |= {score_name(s): s for s in a.scores}
        runs = {
            name: [_cached_run(cache, a.trace, s, rate, score) for s in range(a.seeds)]
            for name, score in names.items()
        }
        base = _pooled(runs["round_robin"]) | _seed_means(runs["round_robin"])
        row = {}
        for name, rs in runs.items():
            m: dict[str, Any] = dict(_pooled(rs)) | _seed_means(rs)
            m["ttft_p90_x"] = m["ttft_p90_ms"] / base["ttft_p90_ms"]
            m["goodput_x"] = m["goodput_rps"] / base["goodput_rps"] if base["goodput_rps"] else None
            # The matrix's own ratios (means of per-seed figures), for its win/loss rule.
            m["matrix_ttft_p90_x"] = _ratio(
                m["ttft_p90_ms_seed_mean"], base["ttft_p90_ms_seed_mean"]
            )
            m["matrix_goodput_x"] = _ratio(
                m["goodput_rps_seed_mean"], base["goodput_rps_seed_mean"]
            )
            m["matrix_verdict"] = bm.verdict(
                {"ttft_ms_p90": m["matrix_ttft_p90_x"], "goodput_rps": m["matrix_goodput_x"]}
            )
            m["goodput_per_seed"] = [r["stats"]["goodput_rps"] for r in rs]
            m["slo_breakdown"] = _summed_breakdown(rs)
            m["ttft_p90_per_seed"] = [r["stats"].get("ttft_ms", {}).get("p90") for r in rs]
            row[name] = m
        doc["rows"][f"{a.trace}|{load:.2f}|{a.seeds}"] = {
            "trace": a.trace,
            "load": load,
            "rate_rps": rate,
            "seeds": a.seeds,
            "variants": row,
            "environment": provenance(),
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
        write(doc, out)
    return 0


def _summed_breakdown(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`slo_breakdown` summed over seeds (None when a cached run predates it)."""
    parts = [r.get("slo_breakdown") for r in runs]
    if any(p is None for p in parts):
        return None
    counts = {k: sum(p["counts"][k] for p in parts) for k in KINDS}  # type: ignore[index]
    by_out: dict[str, dict[str, int]] = {}
    for p in parts:
        for bucket, cell in p["by_output"].items():  # type: ignore[index]
            mine = by_out.setdefault(bucket, dict.fromkeys(KINDS, 0))
            for k in KINDS:
                mine[k] += cell[k]
    return {"requests": sum(counts.values()), "counts": counts, "by_output": by_out}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def write(doc: dict[str, Any], out: Path = OUT) -> None:
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# prefix_aware: least TTFT (default) vs its opt-in added-latency scores, round_robin baseline",
        "",
        "Generated by `benchmarks/added_latency_ab.py` (see its docstring for the method).",
        "Pooled: P90 TTFT over the pooled steady-state requests of all seeds, goodput summed over seeds.",
        "Matrix: means over seeds of each seed's P90 TTFT and goodput (as matrix.md), with its verdict",
        "(win: P90 TTFT <= 0.97x and goodput >= 0.98x; loss: > 1.03x or < 0.98x; else tie).",
        "x = ratio to round_robin in the same cell, same windows, fleet and rate.",
        "Fleet: 8 x Llama-3.1-8B/H100 simulated, 8192 KV blocks, 64 in flight each; SLO P90 TTFT",
        "1000 ms, P90 TPOT 100 ms (every request carries both); windows of 2,000 requests evenly spaced.",
        "",
        "| trace | load | variant | pooled P90 TTFT ms (x) | pooled goodput req/s (x) "
        "| matrix P90 TTFT x, goodput x, verdict | TPOT P50 / P90 ms | SLO attainment | code |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(doc["rows"]):
        r = doc["rows"][key]
        env = r.get("environment")
        code = "-"
        if env:
            code = f"`{(env.get('commit') or '?')[:12]}`" + (" (dirty)" if env.get("dirty") else "")
        for name, m in r["variants"].items():
            g = "-" if m["goodput_x"] is None else f"{m['goodput_x']:.2f}x"
            mx = "-"
            if m.get("matrix_ttft_p90_x") is not None and m.get("matrix_goodput_x") is not None:
                mx = f"{m['matrix_ttft_p90_x']:.2f}x, {m['matrix_goodput_x']:.2f}x, {m['matrix_verdict']}"
            lines.append(
                f"| {r['trace']} | {r['load']:.0%} ({r['seeds']} seeds) | `{name}` | "
                f"{m['ttft_p90_ms']:.0f} ({m['ttft_p90_x']:.2f}x) | {m['goodput_rps']:.1f} ({g}) | "
                f"{mx} | {m['tpot_p50_ms']:.0f} / {m['tpot_p90_ms']:.0f} | "
                f"{m['slo_attainment']:.2f} | {code} |"
            )
    lines += [
        "",
        "## Which requests miss (steady-state requests of all seeds)",
        "",
        "Shares of the steady-state completed requests: met both objectives, missed TTFT only,",
        "TPOT only, both; then the TPOT-only misses by output length (tokens) as a share of that",
        "bucket's requests (`benchmarks/slo_breakdown.py`).",
        "",
        "| trace | load | variant | met / TTFT only / TPOT only / both | TPOT-only misses by output length |",
        "|---|---|---|---|---|",
    ]
    for key in sorted(doc["rows"]):
        r = doc["rows"][key]
        for name, m in r["variants"].items():
            bd = m.get("slo_breakdown")
            if not bd or not bd["requests"]:
                continue
            n = bd["requests"]
            shares = " / ".join(f"{bd['counts'][k] / n:.0%}" for k in KINDS)
            per = ", ".join(
                f"{b}: {c['tpot_only'] / max(1, sum(c[k] for k in KINDS)):.0%}"
                for b, c in bd["by_output"].items()
            )
            lines.append(
                f"| {r['trace']} | {r['load']:.0%} | `{name}` | {shares} ({n} requests) | {per} |"
            )
    envs = [r["environment"] for r in doc["rows"].values() if r.get("environment")]
    if envs:
        lines += ["", "Last row written on: " + provenance_line(envs[-1])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
