"""Quick routing matrix (author's own check, not the official `sage-cp replay` matrix).

Every trace in the shared folder, one window per seed, windows evenly spaced over the whole
trace (window s of S starts at s*(rows-n)/(S-1)); arrivals re-timed to a Poisson-free
time scaling of the trace's own gaps so that the mean rate is `load` x the fleet's estimated
capacity. Capacity per instance is the step model's service rate for the window's mean
lengths at 64 in flight (no cache hits assumed): 1 / (b1*mean_in + mean_out*(b0+64*b2)/64).
Fleet: 8 x Llama-3.1-8B/H100 sims, 8192 KV blocks, 64 in flight each; the same for every router.

usage: python -m benchmarks.routing_quick --routers round_robin,load_balanced --loads 0.5,0.9
       --seeds 3 --n 1000 --json out.json   (a router may name a score: prefix_aware:ttft)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from sage_cp_plugin.scrape import ScrapeConfig
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.sim.presets import DEFAULT_PRESET, PRESETS
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.virtual.summary import summarize
from sage_cp_plugin.workloads import AZURE_CODE, AZURE_CONV, load_azure, load_mooncake
from sage_cp_plugin.workloads.format import WorkloadRecord

ROWS = {"azure_conv": 19366, "azure_code": 8819, "mooncake": 3993}
N_INST = 8
SLOTS = 64
SLO_TTFT_MS = 2000.0
SLO_TPOT_MS = 100.0


def window(trace: str, seed: int, seeds: int, n: int) -> list[WorkloadRecord]:
    rows = ROWS[trace]
    start = 0 if seeds == 1 else round(seed * (rows - n) / (seeds - 1))
    if trace == "mooncake":
        w = load_mooncake(limit=n, start=start, max_input_tokens=16384)
        return [r.model_copy(update={"tenant": f"tenant-{r.prefix_blocks[0] % 16}"}) for r in w]
    name = AZURE_CONV if trace == "azure_conv" else AZURE_CODE
    return load_azure(name, limit=n, start=start, max_input_tokens=16384)


def capacity_rps(w: list[WorkloadRecord]) -> float:
    p = PRESETS[DEFAULT_PRESET]
    mean_in = float(np.mean([r.input_tokens for r in w]))
    mean_out = float(np.mean([r.output_tokens for r in w]))
    step = p.b0_ms / 1e3 + SLOTS * p.b2_us_per_seq / 1e6
    per_req = p.b1_us_per_token / 1e6 * mean_in + mean_out * step / SLOTS
    return N_INST / per_req


def at_load(w: list[WorkloadRecord], rps: float) -> list[WorkloadRecord]:
    span = w[-1].arrival_s - w[0].arrival_s
    scale = (len(w) - 1) / rps / span if span > 0 else 1.0
    t0 = w[0].arrival_s
    return [
        r.model_copy(
            update={
                "arrival_s": (r.arrival_s - t0) * scale,
                "ttft_slo_ms": SLO_TTFT_MS,
                "tpot_slo_ms": SLO_TPOT_MS,
            }
        )
        for r in w
    ]


def run_cell(trace: str, load: float, seed: int, seeds: int, n: int, router: str) -> dict[str, Any]:
    w = window(trace, seed, seeds, n)
    w = at_load(w, load * capacity_rps(w))
    members = [
        MemberSpec(
            SimInstanceConfig(seed=seed * 10 + i, num_kv_blocks=8192), max_concurrent_requests=SLOTS
        )
        for i in range(N_INST)
    ]
    name, _, score = router.partition(":")  # router[:score], e.g. prefix_aware:ttft
    cfg = CoordinatorConfig(
        router=name,
        router_options={"score": score} if score else {},
        extra={"scrape": ScrapeConfig(interval_s=0.5, stale_after_s=2.0)},
    )
    res = run_replay(w, InProcessFleet(members), cfg, prompt_seed=seed)
    s = summarize(res, group_by=None)
    a = s["all"]
    done = [o for o in res.outcomes if o.state == "completed"]
    good = sum(1 for o in res.outcomes if o.slo_met)
    span = max(o.arrival_s for o in res.outcomes) or 1.0
    return {
        "trace": trace,
        "load": load,
        "seed": seed,
        "router": router,
        "ttft_p50": a.get("ttft_ms_p50"),
        "ttft_p90": a.get("ttft_ms_p90"),
        "tpot_p90": a.get("tpot_ms_p90"),
        "completed": len(done),
        "goodput_rps": good / span,
        "cached_prompt_fraction": s.get("cached_prompt_fraction", s.get("prefix_hit_rate")),
        "decision_us_p50": _p50(s["decision"]),
        "wall_s": s["wall_s"],
    }


def _p50(d: dict[str, Any]) -> float:
    bins = d.get("by_queue_length", {})
    vals = [(b["rounds"], b["us_per_decision_p50"]) for b in bins.values()]
    return max(vals)[1] if vals else 0.0


ROUTERS = ("round_robin", "load_balanced", "prefix_aware", "kv_aware")


def report(rows: list[dict[str, Any]]) -> str:
    """Every trace x load cell: per router, means over the seeds it ran and its ratios to
    round_robin on the same seeds (paired)."""
    cells: dict[tuple[str, float, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["trace"], r["load"], r["seed"]), {})[r["router"]] = r
    out = [
        "| trace | load | router | seeds | P50 TTFT ms | P90 TTFT ms | P90 TTFT vs RR "
        "| worst seed vs RR | goodput vs RR | P90 TPOT ms | cached prompt |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(t, load) for t, load, _ in cells})
    for t, load in keys:
        seeds = [d for (tt, ll, _), d in sorted(cells.items()) if (tt, ll) == (t, load)]
        present = {r for d in seeds for r in d}
        for router in [*ROUTERS, *sorted(present - set(ROUTERS))]:
            pairs = [
                (d[router], d["round_robin"]) for d in seeds if router in d and "round_robin" in d
            ]
            if not pairs:
                continue
            m = {
                k: float(np.mean([a[k] for a, _ in pairs]))
                for k in (
                    "ttft_p50",
                    "ttft_p90",
                    "tpot_p90",
                    "goodput_rps",
                    "cached_prompt_fraction",
                )
            }
            p90 = m["ttft_p90"] / float(np.mean([b["ttft_p90"] for _, b in pairs]))
            worst = max(a["ttft_p90"] / b["ttft_p90"] for a, b in pairs)
            good = m["goodput_rps"] / float(np.mean([b["goodput_rps"] for _, b in pairs]))
            out.append(
                f"| {t} | {load:.0%} | {router} | {len(pairs)} | {m['ttft_p50']:.0f} | "
                f"{m['ttft_p90']:.0f} | {p90:.3f}x | {worst:.2f}x | {good:.3f}x | "
                f"{m['tpot_p90']:.1f} | {m['cached_prompt_fraction']:.3f} |"
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="azure_conv,azure_code,mooncake")
    ap.add_argument("--routers", default="round_robin,load_balanced,prefix_aware,kv_aware")
    ap.add_argument("--loads", default="0.5,0.7,0.9,1.1")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", nargs="*", help="aggregate these JSON row files into a table")
    a = ap.parse_args()
    if a.report:
        rows = [r for f in a.report for r in json.load(open(f))]
        print(report(rows))
        return
    rows = []
    for trace in a.traces.split(","):
        for load in [float(x) for x in a.loads.split(",")]:
            for seed in range(a.seeds):
                for router in a.routers.split(","):
                    t = time.time()
                    r = run_cell(trace, load, seed, a.seeds, a.n, router)
                    rows.append(r)
                    print(json.dumps(r), f"({time.time() - t:.0f}s)", flush=True, file=sys.stderr)
                    if a.json:
                        with open(a.json, "w") as f:
                            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
