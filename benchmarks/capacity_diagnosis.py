"""What bounds capacity at SLO: each capacity probe of a matrix run, next to the fleet's prefill load.

Reads a `bench_matrix.py` cell cache (`<name>.cells.jsonl`) and replays nothing. For every
variant and probed rate of one trace it lists, per seed window: P90 TTFT and TPOT, the P90 of
the time spent in the coordinator's queue, the prompt fraction served from cache, the steady
requests that missed only TTFT / only TPOT / both (`slo_breakdown`), the engines' preemptions
per request (a preempted request drops its KV and prefills again), and the fleet's
**prefill utilisation**

    rho = rate * (1 - cached fraction) * mean prompt tokens * b1 / instances

(b1: the engine preset's seconds per prefill token, the published step-time fit). It is a
lower bound on how busy the GPUs are: decode steps and each step's fixed cost come on top.
It answers whether a router can still raise the capacity: a variant that misses at a rate
where rho is already high is bounded by prefill compute, and can only gain through cache hits
(fewer prefill tokens) or an order that serves short prefills first; one that misses at low
rho is bounded by placement (work piled on some instances while others idle).

Run: ``python benchmarks/capacity_diagnosis.py --cells benchmarks/results/capacity_s9.cells.jsonl
--trace mooncake --name capacity_s9_diagnosis`` (writes benchmarks/results/<name>.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.bench_matrix import INSTANCES, MAX_INPUT_TOKENS, PRESET, RESULTS, SLO_TTFT_MS
from sage_cp_plugin.sim.presets import get_preset
from sage_cp_plugin.workloads.synthetic import evenly_spaced_windows
from sage_cp_plugin.workloads.traces import read_trace


def mean_prompts(trace: str, window: int, seeds: int) -> list[float]:
    """Mean prompt tokens of each seed's window (the windows bench_matrix replays)."""
    t = read_trace(trace, max_input_tokens=MAX_INPUT_TOKENS)
    _, wins = evenly_spaced_windows(t.records, window, seeds)
    return [float(np.mean([r.input_tokens for r in w])) for w in wins]


def load_cells(path: Path, trace: str) -> dict[tuple[str, float], dict[int, dict[str, Any]]]:
    """(variant, rate) -> seed -> cached result, for `trace` (the saturating probe left out)."""
    out: dict[tuple[str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        parts = row["key"].split("|")
        # key: w<window>|<engine>|<coordinator>|trace|variant|seed|rate|src=...
        t, variant, seed, rate = parts[3], parts[4], int(parts[5]), float(parts[6])
        if t == trace and rate < 1000:
            out[(variant, rate)][seed] = row["result"]
    return out


def diagnose(path: Path, trace: str, window: int) -> dict[str, Any]:
    cells = load_cells(path, trace)
    seeds = sorted({s for by_seed in cells.values() for s in by_seed})
    prompts = mean_prompts(trace, window, len(seeds))
    b1_s = get_preset(PRESET).b1_us_per_token * 1e-6
    rows = []
    for (variant, rate), by_seed in sorted(cells.items()):
        if sorted(by_seed) != seeds:
            continue  # a probe not finished for every seed
        per_seed = []
        ttft_all = [x for s in seeds for x in by_seed[s]["ttft"]]
        tpot_all = [x for s in seeds for x in by_seed[s]["tpot"]]
        for s in seeds:
            r = by_seed[s]
            st = r["stats"]
            # Cells replayed before bench_matrix recorded the breakdown have none.
            br = r.get("slo_breakdown", {}).get("counts")
            n = max(1, sum(br.values())) if br else 1
            f = st.get("cached_prompt_fraction", 0.0)
            per_seed.append(
                {
                    "seed": s,
                    "ttft_p90_ms": st["ttft_ms"]["p90"],
                    "tpot_p90_ms": st["tpot_ms"]["p90"],
                    "queue_p90_ms": st.get("queue_ms", {}).get("p90"),
                    "cached_prompt_fraction": f,
                    "prefill_utilisation": rate * (1 - f) * prompts[s] * b1_s / INSTANCES,
                    "ttft_only": br["ttft_only"] / n if br else None,
                    "tpot_only": br["tpot_only"] / n if br else None,
                    "both": br["both"] / n if br else None,
                    "failed": st["failed"],
                    # vLLM-style recompute preemptions (KV full): each re-prefills its prompt.
                    "preemptions_per_request": st.get("preemptions", 0) / max(1, st["requests"]),
                }
            )
        rows.append(
            {
                "variant": variant,
                "rate_rps": rate,
                "pooled_ttft_p90_ms": float(np.percentile(ttft_all, 90)) if ttft_all else None,
                "pooled_tpot_p90_ms": float(np.percentile(tpot_all, 90)) if tpot_all else None,
                "meets": bool(
                    ttft_all
                    and float(np.percentile(ttft_all, 90)) <= SLO_TTFT_MS
                    and all(by_seed[s]["stats"]["failed"] == 0 for s in seeds)
                    and (not tpot_all or float(np.percentile(tpot_all, 90)) <= 100.0)
                ),
                "seeds": per_seed,
            }
        )
    return {
        "cells": str(path),
        "trace": trace,
        "window": window,
        "mean_prompt_tokens_per_seed": prompts,
        "b1_s_per_prefill_token": b1_s,
        "instances": INSTANCES,
        "rows": rows,
    }


def _misses(s: dict[str, Any]) -> str:
    if s["ttft_only"] is None:
        return "n/a"
    return f"{s['ttft_only']:.0%}/{s['tpot_only']:.0%}/{s['both']:.0%}"


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# Capacity probes on {doc['trace']}: what bounds them",
        "",
        f"Generated by `benchmarks/capacity_diagnosis.py` from `{Path(doc['cells']).name}` "
        "(method in its docstring). Per seed window: P90 TTFT / P90 TPOT / P90 coordinator "
        "queue (ms), prompt fraction from cache, prefill utilisation rho (a lower bound on GPU "
        "busy time), steady requests missing only TTFT / only TPOT / both, preemptions per request. "
        "Mean prompt tokens "
        "per window: " + ", ".join(f"{p:.0f}" for p in doc["mean_prompt_tokens_per_seed"]) + ".",
        "",
        "| variant | req/s | pooled P90 TTFT / TPOT ms | meets | per seed: TTFT/TPOT/queue P90 ms, "
        "cached, rho, misses TTFT-only/TPOT-only/both, preemptions per request |",
        "|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        seeds = "; ".join(
            f"s{s['seed']}: {s['ttft_p90_ms']:.0f}/{s['tpot_p90_ms']:.0f}/"
            f"{(s['queue_p90_ms'] or 0):.0f}, {s['cached_prompt_fraction']:.3f}, "
            f"{s['prefill_utilisation']:.2f}, {_misses(s)}, {s['preemptions_per_request']:.2f}"
            for s in r["seeds"]
        )
        lines.append(
            f"| {r['variant']} | {r['rate_rps']:.3g} | {r['pooled_ttft_p90_ms']:.0f} / "
            f"{r['pooled_tpot_p90_ms']:.0f} | {'yes' if r['meets'] else 'no'} | {seeds} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", required=True, help="a bench_matrix cell cache (.cells.jsonl)")
    p.add_argument("--trace", default="mooncake")
    p.add_argument("--window", type=int, default=2000, help="the run's --window (default 2000)")
    p.add_argument("--name", default="capacity_diagnosis", help="result file stem")
    args = p.parse_args(argv)
    path = Path(args.cells)
    if not path.is_file():
        p.error(f"no cell cache at {path}")
    doc = diagnose(path, args.trace, args.window)
    if not doc["rows"]:
        p.error(f"no complete probe of trace {args.trace!r} in {path}")
    (RESULTS / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    (RESULTS / f"{args.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
