"""Routing quality of three replicas sharing state vs one process, on replayed traces.

Question (issue 16): do three gateway replicas, each with its own coordinator and a client
spreading requests over them round-robin, route as well as one process? Measured: P90 TTFT
and cached prompt fraction (the fleet's prefix-cache hits over prompt tokens).

Variants, same fleet, slots, options and trace window for all:
- `one_process`: one coordinator (the baseline);
- `3_shared`: three coordinators sharing load, admin state and the approximate prefix view
  through `fleetshare` (`FleetShare`, the code `sage-cp serve --redis-url` runs), publishing
  at each dispatch and every 50 ms, messages delivered `--delays-ms` after they are sent
  (default 0.5 ms: Redis pub/sub publish -> receive on loopback, p50, measured);
- `3_blind`: three coordinators sharing nothing (what a second replica did before this);
- `3_shared_lockstep` (ablation, on request): `3_shared` with every replica's tie-break
  rotation and round-robin cursor where one process's would be (before replicas knew their
  index among their peers, `routing/rotation.py`).
The client sends request j to replica j mod 3. The store is the in-memory one
(`InMemoryFleetStateStore`): the virtual clock cannot wait on a real Redis socket; the
real-Redis path is covered by tests/test_fleetshare_redis.py and
tests/test_replica_spread_redis.py, its delay measured by benchmarks/bench_share_delay.py.

Workload and fleet as benchmarks/routing_quick.py: 8 x Llama-3.1-8B/H100 simulators,
8192 KV blocks, 64 slots, no KV events (the approximate view is what replicas must share);
windows evenly spaced over each trace (one per seed); arrivals re-timed to `load` x the
fleet's estimated capacity; SLOs TTFT 2 s, TPOT 100 ms.

usage: python -m benchmarks.bench_replicas [--smoke] [--routers prefix_aware,load_balanced]
       [--traces azure_conv,azure_code,mooncake] [--loads 0.5,0.8] [--seeds 3] [--n 1000]
       [--variants one_process,3_shared,3_blind] [--delays-ms 0.5] [--jobs 2]
       [--stem replicas] [--rows LOG ...]
Writes benchmarks/results/{stem}.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.routing_quick import N_INST, SLOTS, at_load, capacity_rps, window
from sage_cp_plugin.errors import QueueFullError, RequestRejectedError
from sage_cp_plugin.fleetshare.store import InMemoryFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.scrape import ScrapeConfig
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.provenance import provenance
from sage_cp_plugin.virtual.runner import (
    CoordinatorConfig,
    RunResult,
    _outcome,
    _request,
)
from sage_cp_plugin.virtual.summary import summarize
from sage_cp_plugin.virtual.target import engine_totals
from sage_cp_plugin.workloads.format import WorkloadRecord
from sage_cp_plugin.workloads.prompts import PromptBuilder

OUT = Path(__file__).parent / "results"
VARIANTS = {"one_process": (1, False), "3_shared": (3, True), "3_blind": (3, False)}
# Ablations (not run by default): the same sharing without one of its parts.
# `3_shared_lockstep`: every replica starts its tie-break rotation and round-robin cursor at
# the same place (as before replicas knew their index among their peers).
# `3_shared_onespeed` (a diagnosis, not something replicas on several hosts can do): the
# replicas learn instance speeds into one shared estimate, as one process does from every
# request, instead of each from its third of them.
ABLATIONS = {"3_shared_lockstep": (3, True), "3_shared_onespeed": (3, True)}
# Publish -> receive of one load message through Redis pub/sub on loopback, p50 (measured:
# redis-server from the dev extra, 2,000 messages of an 8-instance record; p90 0.66 ms).
DELIVERY_DELAY_S = 0.0005


def _lockstep(share: FleetShare) -> None:
    """Ablation: the replica's rotation stays where one process's would be."""
    apply = share.peers.apply

    def apply_alone(fleet: Any) -> None:
        apply(fleet)
        fleet.replica = (0, 1)

    share.peers.apply = apply_alone  # type: ignore[method-assign]


async def _run(
    w: list[WorkloadRecord], fleet: InProcessFleet, cfg: CoordinatorConfig, variant: str,
    seed: int, delay_s: float,
) -> RunResult:  # fmt: skip
    loop = asyncio.get_running_loop()
    replicas, share = {**VARIANTS, **ABLATIONS}[variant]
    managers: list[ControlPlaneManager] = [cfg.build(fleet, len(w)) for _ in range(replicas)]
    store = InMemoryFleetStateStore(delivery_delay_s=delay_s)
    shares = [FleetShare(m, store, f"r{i}") for i, m in enumerate(managers)] if share else []
    if variant == "3_shared_lockstep":
        for sh in shares:
            _lockstep(sh)
    if variant == "3_shared_onespeed":
        for m in managers[1:]:
            for iid, st in m.fleet.states.items():
                st.share_speeds(managers[0].fleet.states[iid])
    builder = PromptBuilder(seed)
    outcomes = [_outcome(r, i) for i, r in enumerate(w)]
    ids: list[tuple[int, int, str]] = []
    for m in managers:
        await m.start()
    for s in shares:
        await s.start()
    t0 = loop.time()
    try:
        for i, rec in enumerate(w):
            delay = t0 + rec.arrival_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            k = i % replicas  # the client spreads requests over the replicas in turn
            try:
                ids.append((i, k, await managers[k].submit_request(_request(rec, i, builder))))
            except (QueueFullError, RequestRejectedError) as exc:
                outcomes[i].state, outcomes[i].error_type = "shed", type(exc).__name__
        for i, k, rid in ids:
            res = await managers[k].wait(rid)
            o, t = outcomes[i], res.timings
            o.state, o.error_type, o.instance_id = res.state.value, res.error_type, res.instance_id
            o.completion_tokens, o.slo_met, o.attempts = (
                res.completion_tokens,
                res.slo_met,
                res.attempts,
            )
            o.queue_ms, o.ttft_ms, o.tpot_ms, o.e2e_ms = t.queue_ms, t.ttft_ms, t.tpot_ms, t.e2e_ms
    finally:
        for s in shares:
            await s.stop()
        for m in managers:
            await m.stop()
        await fleet.aclose()
    return RunResult(outcomes, 0.0, loop.time() - t0, engine_totals(fleet.sims()), {}, {},
                     [i.instance_id for i in fleet.instances])  # fmt: skip


def run_cell(trace: str, load: float, seed: int, seeds: int, n: int, router: str,
             variant: str, delay_s: float = DELIVERY_DELAY_S) -> dict[str, Any]:  # fmt: skip
    w = window(trace, seed, seeds, n)
    w = at_load(w, load * capacity_rps(w))
    members = [
        MemberSpec(SimInstanceConfig(seed=seed * 10 + i, num_kv_blocks=8192),
                   max_concurrent_requests=SLOTS)
        for i in range(N_INST)
    ]  # fmt: skip
    cfg = CoordinatorConfig(
        router=router, extra={"scrape": ScrapeConfig(interval_s=0.5, stale_after_s=2.0)}
    )
    wall0 = time.perf_counter()
    res = run_virtual(_run(w, InProcessFleet(members), cfg, variant, seed, delay_s))
    s = summarize(res, group_by=None)
    a = s["all"]
    return {
        "trace": trace, "load": load, "seed": seed, "router": router, "variant": variant,
        "delay_ms": delay_s * 1e3,
        "ttft_p50": a.get("ttft_ms_p50"), "ttft_p90": a.get("ttft_ms_p90"),
        "tpot_p90": a.get("tpot_ms_p90"), "completed": a.get("completed"),
        "cached_prompt_fraction": s["cached_prompt_fraction"],
        "wall_s": time.perf_counter() - wall0,
    }  # fmt: skip


def label(row: dict[str, Any]) -> str:
    """The variant, with the store's delivery delay when replicas share state through it."""
    if {**VARIANTS, **ABLATIONS}[row["variant"]][1]:
        return f"{row['variant']} @{row.get('delay_ms', 1.0):g} ms"
    return str(row["variant"])


def _cell(args: tuple[Any, ...]) -> dict[str, Any]:
    return run_cell(*args)


def report(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Per trace x load x router: each variant's mean over seeds and its paired ratio to
    one_process (P90 TTFT ratio; cached prompt fraction difference in points)."""
    cells: dict[tuple[str, float, str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["trace"], r["load"], r["router"], r["seed"]), {})[label(r)] = r
    labels = list(dict.fromkeys(label(r) for r in rows))
    lines = [
        "| trace | load | router | variant | seeds | P90 TTFT ms | P90 TTFT vs one | worst seed "
        "| cached prompt | cached vs one (pts) | within 5 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for t, load, router in sorted({(a, b, c) for a, b, c, _ in cells}):
        per_seed = [
            d for (a, b, c, _), d in sorted(cells.items()) if (a, b, c) == (t, load, router)
        ]
        for v in labels:
            pairs = [(d[v], d["one_process"]) for d in per_seed if v in d and "one_process" in d]
            if not pairs:
                continue
            ratios = [x["ttft_p90"] / b["ttft_p90"] for x, b in pairs if b["ttft_p90"]]
            cache_diff = [
                x["cached_prompt_fraction"] - b["cached_prompt_fraction"] for x, b in pairs
            ]
            ttft = float(np.mean([x["ttft_p90"] for x, _ in pairs]))
            cached = float(np.mean([x["cached_prompt_fraction"] for x, _ in pairs]))
            base_cached = float(np.mean([b["cached_prompt_fraction"] for _, b in pairs]))
            r_mean = float(np.mean(ratios)) if ratios else float("nan")
            ok = r_mean <= 1.05 and (cached >= 0.95 * base_cached)
            verdicts.append({"trace": t, "load": load, "router": router, "variant": v,
                             "p90_ttft_ratio": r_mean, "cached_ratio": cached / base_cached
                             if base_cached else None, "within_5pct": ok})  # fmt: skip
            lines.append(
                f"| {t} | {load} | {router} | {v} | {len(pairs)} | {ttft:.0f} | {r_mean:.3f} "
                f"| {max(ratios) if ratios else float('nan'):.3f} | {cached:.3f} "
                f"| {100 * float(np.mean(cache_diff)):+.1f} | {'yes' if ok else 'NO'} |"
            )
    return "\n".join(lines) + "\n", verdicts


def plot(verdicts: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = sorted({f"{v['trace']}@{v['load']}\n{v['router']}" for v in verdicts})
    xs = np.arange(len(labels))
    variants = list(dict.fromkeys(v["variant"] for v in verdicts if v["variant"] != "one_process"))
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        sel = {f"{v['trace']}@{v['load']}\n{v['router']}": v for v in verdicts
               if v["variant"] == variant}  # fmt: skip
        for ax, key in zip(axes, ("p90_ttft_ratio", "cached_ratio"), strict=True):
            heights = [(sel[lb][key] or 0) if lb in sel else 0 for lb in labels]
            ax.bar(xs + (j - (len(variants) - 1) / 2) * width, heights, width, label=variant)
    for ax, title in zip(
        axes, ("P90 TTFT / one process", "cached prompt / one process"), strict=True
    ):
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.05 if "TTFT" in title else 0.95, color="r", ls="--", lw=0.8)
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--traces", default="azure_conv,azure_code,mooncake")
    ap.add_argument("--routers", default="prefix_aware,load_balanced")
    ap.add_argument("--loads", default="0.5,0.8")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"among {[*VARIANTS, *ABLATIONS]}; one_process is the baseline",
    )
    ap.add_argument(
        "--delays-ms",
        default=f"{DELIVERY_DELAY_S * 1e3:g}",
        help="the store's delivery delay(s) for the sharing variants, ms",
    )
    ap.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    ap.add_argument("--stem", default="replicas", help="results file name")
    ap.add_argument(
        "--rows",
        type=Path,
        nargs="+",
        help="run nothing: report the rows these logs of earlier runs printed",
    )
    ap.add_argument("--smoke", action="store_true", help="1 trace, 1 load, 1 seed, 200 requests")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    traces, routers = args.traces.split(","), args.routers.split(",")
    loads = [float(x) for x in args.loads.split(",")]
    seeds, n = args.seeds, args.n
    if args.smoke:
        traces, loads, seeds, n, routers = traces[:1], loads[:1], 1, 200, routers[:1]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in {**VARIANTS, **ABLATIONS}]
    if unknown or "one_process" not in variants:
        ap.error(f"--variants: unknown {unknown} (known: {[*VARIANTS, *ABLATIONS]}); "
                 "one_process, the baseline, must be among them")  # fmt: skip
    delays = [float(x) / 1e3 for x in args.delays_ms.split(",")]
    # Seeds outermost: a run cut short still has every cell of its first seeds.
    jobs = [
        (t, load, seed, seeds, n, router, v, d)
        for seed in range(seeds) for t in traces for load in loads for router in routers
        for v in variants for d in (delays if {**VARIANTS, **ABLATIONS}[v][1] else delays[:1])
    ]  # fmt: skip
    rows = []
    if args.rows is not None:  # report rows printed by earlier runs (one JSON object a line)
        for path in args.rows:
            rows += [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
        jobs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(_cell, jobs):
            print(json.dumps(row), flush=True)
            rows.append(row)
    table, verdicts = report(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.stem}_smoke" if args.smoke else args.stem
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"provenance": provenance(), "args": vars(args) | {"out": str(args.out),
                                                    "rows": [str(x) for x in args.rows or []]},
         "rows": rows, "verdicts": verdicts}, indent=1))  # fmt: skip
    head = (f"# Three replicas sharing state vs one process\n\n{__doc__.split('usage:')[0]}\n"
            f"Windows: {n} requests, seeds {seeds}. Ratios are paired per seed.\n\n")  # fmt: skip
    (args.out / f"{stem}.md").write_text(head + table)
    plot(verdicts, args.out / f"{stem}.png")
    print(table)


if __name__ == "__main__":
    main()
