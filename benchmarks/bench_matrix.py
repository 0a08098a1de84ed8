"""Benchmark matrix: every bundled trace x load x seed, for every built-in router and policy.

Replaces showcase windows (issue 10, item 7). Everything is chosen by rule, the same for every
trace; nothing is tuned to a window.
- Traces: azure_conv, azure_code, mooncake (bundled; origin and licences in
  sage_cp_plugin/workloads/data/README.md), or any trace file `sage-cp replay` reads
  (`--traces NAME=FILE`), e.g. the rule-generated families of `benchmarks/holdout_traces.py`.
- Windows: one per seed, `--window` requests each, at offsets spread evenly over the whole trace
  (offset_j = round(j * (rows - window) / (seeds - 1)): the first, middle and last part for 3
  seeds). Prompts are clipped at 16,384 tokens (only Mooncake has longer ones).
- Fleet: 8 x Llama-3.1-8B/H100 simulated (published step-time fit), 8192 KV blocks, 64 requests
  in flight each (as prefix_multi_tenant); coordinator defaults otherwise.
- SLO: P90 TTFT <= 1000 ms and P90 TPOT <= 100 ms (the repository's `standard` class).
- Load: fractions of the fleet's sustainable throughput per trace, measured first: each seed's
  window offered at once (10,000 req/s) to round_robin+fifo; the completion rate from the first
  10 % of completions until the coordinator's queue empties (every slot busy all along), mean
  over seeds. Loads are 50/70/90/110 % of it (110 % is overload).
- Capacity at SLO per variant (`--capacity all`; `baseline` for the baseline only): the highest
  mean arrival rate (the trace's own arrival pattern time-scaled) with P90 TTFT and P90 TPOT over
  the steady-state requests of all seeds within the SLO and nothing lost. Bracketing from the
  sustainable throughput (steps of x1.25), then geometric bisection to `--tolerance` (when the
  variant's own matrix cells already bracket the SLO, a load that meets it below one that
  misses, the search starts from that bracket). A finite
  window lets the fleet's 512 slots absorb part of a burst, so this can exceed the sustainable
  throughput; it is a comparison between variants on the same windows.
- Variants: the baseline round_robin+fifo; every other router with fifo; every other policy
  with round_robin. Ratios are to the baseline of the same trace, load and seeds.
- A cell is a win when P90 TTFT <= 0.97x and goodput >= 0.98x the baseline's, a loss when
  P90 TTFT > 1.03x or goodput < 0.98x, else a tie.

Sizes: windows of 2,000 requests (well above the fleet's 512 slots, so a queue can form and
the sustainable throughput can be measured). Replay speed bounds the matrix: about 7,000
streamed tokens per CPU-second, i.e. ~20 s of CPU per 2,000-request window of Azure code,
~60 s for Azure conversation and Mooncake on a quiet core (several times that on a loaded
one). The full default matrix (3 traces x 3 seeds x 4 loads x 10 variants plus capacities)
therefore takes many hours on 2 cores; `--seeds 1 --loads 0.9 --capacity none` is the quick
form. Resumable: finished replays are appended to `<name>.cells.jsonl` and a re-run with the
same arguments replays only what is missing; `--report-only` writes the result files from it
(missing cells marked). Run order: the baseline and the default router over every trace and
load (loads in the order given), then the other routers, then the policies, then the
capacities. The result files
record what was run.

Run: ``python benchmarks/bench_matrix.py [--seeds N] [--loads ...] [--capacity ...]``.
Writes benchmarks/results/<name>.{json,md,png} (`--name`, default matrix).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.decision_sources import decision_hash
from benchmarks.slo_breakdown import slo_breakdown
from sage_cp_plugin.options import ControlPlaneOptions
from sage_cp_plugin.plugins.registry import get_registry
from sage_cp_plugin.virtual.capacity import find_capacity
from sage_cp_plugin.virtual.compare import (
    BASELINE,
    ReplaySetup,
    ReplayVariant,
    build_variants,
    run_variant,
    variant_entry,
    with_baseline_ratios,
)
from sage_cp_plugin.virtual.fleet_file import preset_fleet
from sage_cp_plugin.virtual.provenance import provenance, provenance_line
from sage_cp_plugin.virtual.steady import saturated_throughput, steady_interval, steady_stats
from sage_cp_plugin.workloads.synthetic import evenly_spaced_windows
from sage_cp_plugin.workloads.traces import read_trace

RESULTS = Path(__file__).resolve().parent / "results"
TRACES = ("azure_conv", "azure_code", "mooncake")
LOADS = (0.5, 0.7, 0.9, 1.1)
PRESET = "llama-3.1-8b-h100-tp1"
INSTANCES, KV_BLOCKS, IN_FLIGHT = 8, 8192, 64
MAX_INPUT_TOKENS = 16384
SLO_TTFT_MS, SLO_TPOT_MS = 1000.0, 100.0
SATURATING_RPS = 10_000.0
WIN_TTFT, LOSS_TTFT, MIN_GOODPUT = 0.97, 1.03, 0.98

# Set in the parent before the worker pool forks: workers read the setups from here.
_SETUPS: dict[str, ReplaySetup] = {}


def trace_source(spec: str) -> tuple[str, str]:
    """`--traces` entry -> (name in the results, what `read_trace` opens): a bundled name, a
    file (named by its stem) or ``NAME=FILE``. A trace this repository does not have runs
    through the same rules as the bundled ones (windows, loads, fleet, SLO)."""
    if spec in TRACES:
        return spec, spec
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    if not name or not Path(path).is_file():
        raise ValueError(f"--traces {spec!r}: not a bundled trace ({', '.join(TRACES)}) or a file")
    return name, path


def make_setup(
    trace: str, window: int, seeds: int, engine: dict[str, Any], coordinator: dict[str, Any]
) -> tuple[ReplaySetup, list[int]]:
    t = read_trace(trace, max_input_tokens=MAX_INPUT_TOKENS)
    offsets, wins = evenly_spaced_windows(t.records, window, seeds)
    setup = ReplaySetup(
        windows=lambda seed: wins[seed],
        members=lambda seed: preset_fleet(
            INSTANCES,
            PRESET,
            seed=seed,
            max_concurrent_requests=IN_FLIGHT,
            num_kv_blocks=KV_BLOCKS,
            **engine,
        ),
        coordinator={"extra": coordinator} if coordinator else {},
        timed=t.timed,
        slo_ttft_ms=SLO_TTFT_MS,
        slo_tpot_ms=SLO_TPOT_MS,
    )
    return setup, offsets


def _job(args: tuple[str, ReplayVariant, int, float]) -> dict[str, Any]:
    """One replay in a worker: its steady stats plus the raw steady-state latencies."""
    trace, variant, seed, rate = args
    r = run_variant(_SETUPS[trace], variant, seed, rate)
    stats = steady_stats(r)
    stats["seed"] = seed
    stats["wall_s"] = r.wall_s
    a, b = steady_interval(r.outcomes)
    mid = [o for o in r.outcomes if a <= o.arrival_s <= b and o.state == "completed"]
    return {
        "stats": stats,
        "saturated_rps": saturated_throughput(r.outcomes),
        "ttft": [round(o.ttft_ms, 2) for o in mid if o.ttft_ms is not None],
        "tpot": [round(o.tpot_ms, 3) for o in mid if o.tpot_ms is not None],
        "all_completed": stats["failed"] == 0,
        # Which objective the steady-state requests missed (reporting only).
        "slo_breakdown": slo_breakdown(r.outcomes, SLO_TTFT_MS, SLO_TPOT_MS),
    }


Job = tuple[str, ReplayVariant, int, float]


class Missing(Exception):
    """A replay the report needs is not in the cell cache (`--report-only`)."""


class CellCache:
    """Every finished replay, appended to a JSON-lines file as it finishes, so a killed run
    resumes where it stopped (the virtual clock makes a replay a function of its inputs: the
    same trace, window, variant, seed, rate and options give the same result)."""

    def __init__(self, path: Path, tag: str, report_only: bool) -> None:
        self.path, self.tag, self.report_only = path, tag, report_only
        self.done: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.done[row["key"]] = row["result"]
        self.lock = threading.Lock()
        self.finished = 0
        self.t0 = time.perf_counter()

    def key(self, job: Job) -> str:
        trace, v, seed, rate = job
        # The hash of the variant's decision sources: a cell replayed before a routing change
        # is not this code's result (benchmarks/decision_sources.py).
        src = decision_hash(v.router, v.policy)
        return f"{self.tag}|{trace}|{v.name}|{seed}|{rate:.6g}|src={src}"

    def run(self, pool: Executor | None, jobs: list[Job]) -> list[dict[str, Any]]:
        """Results of `jobs` in order; the cached ones are not replayed again (without a
        pool, only cached ones may be asked for)."""
        todo = [j for j in dict.fromkeys(jobs) if self.key(j) not in self.done]
        if todo and (self.report_only or pool is None):
            raise Missing(f"{len(todo)} replays not in the cache")
        futures = {pool.submit(_job, j): j for j in todo} if pool is not None else {}
        for f in as_completed(futures):
            j, res = futures[f], f.result()
            with self.lock:
                self.done[self.key(j)] = res
                with self.path.open("a") as fh:
                    fh.write(json.dumps({"key": self.key(j), "result": res}) + "\n")
                self.finished += 1
                p90 = res["stats"].get("ttft_ms", {}).get("p90")
                _log(
                    f"[{self.finished} replayed, {len(self.done)} cached] {j[0]} {j[1].name} "
                    f"seed {j[2]} at {j[3]:.4g} req/s: P90 TTFT "
                    f"{'-' if p90 is None else f'{p90:.0f} ms'}, {res['stats']['wall_s']:.0f}s wall",
                    self.t0,
                )
        return [self.done[self.key(j)] for j in jobs]


def _meets(
    cache: CellCache,
    pool: Executor | None,
    trace: str,
    v: ReplayVariant,
    seeds: list[int],
    rate: float,
) -> bool:
    res = cache.run(pool, [(trace, v, s, rate) for s in seeds])
    if not all(r["all_completed"] for r in res):
        return False
    ttft = [x for r in res for x in r["ttft"]]
    tpot = [x for r in res for x in r["tpot"]]
    if not ttft:
        return False
    ok_ttft = float(np.percentile(ttft, 90)) <= SLO_TTFT_MS
    ok_tpot = not tpot or float(np.percentile(tpot, 90)) <= SLO_TPOT_MS
    return ok_ttft and ok_tpot


def _log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def known_bracket(
    cache: CellCache,
    trace: str,
    v: ReplayVariant,
    seeds: list[int],
    rates: list[float],
    guess: float,
    growth: float,
) -> tuple[float, float]:
    """Where the capacity search starts: (first rate, growth factor). From the variant's own
    matrix cells already replayed when they bracket the SLO (the highest load that meets it
    below the lowest that misses): both ends are then in the cache, so the search begins
    with bisection instead of paying for replays that re-measure a bracket. Otherwise the
    given guess and growth."""
    passed: list[float] = []
    failed: list[float] = []
    for rate in sorted(rates):
        if all(cache.key((trace, v, s, rate)) in cache.done for s in seeds):
            # Every replay is cached: `_meets` replays nothing here.
            (passed if _meets(cache, None, trace, v, seeds, rate) else failed).append(rate)
    if not failed:
        return (passed[-1], growth) if passed else (guess, growth)
    hi = failed[0]
    below = [r for r in passed if r < hi]
    return (below[-1], hi / below[-1]) if below else (hi, growth)


def capacity_of(
    cache: CellCache,
    pool: Executor,
    trace: str,
    v: ReplayVariant,
    seeds: list[int],
    guess: float,
    growth: float,
    tol: float,
    cell_rates: list[float] | None = None,
) -> dict[str, Any]:
    def meets(rate: float) -> bool:
        ok = _meets(cache, pool, trace, v, seeds, rate)
        _log(f"{trace} capacity {v.name}: {rate:.3g} req/s {'meets' if ok else 'misses'}", cache.t0)
        return ok

    if cell_rates:
        guess, growth = known_bracket(cache, trace, v, seeds, cell_rates, guess, growth)
    try:
        res = find_capacity(meets, guess, tolerance=tol, growth=growth)
    except Missing as e:
        return {"capacity_rps": None, "incomplete": str(e)}
    lo, hi = res.bracket
    return {
        "capacity_rps": res.capacity_rps,
        "bracket": [lo, None if math.isinf(hi) else hi],
        "probes": [[r, ok] for r, ok in res.probes],
    }


def verdict(r: dict[str, Any]) -> str:
    t, g = r.get("ttft_ms_p90"), r.get("goodput_rps")
    if t is None or g is None:
        return "n/a"
    if t > LOSS_TTFT or g < MIN_GOODPUT:
        return "loss"
    return "win" if t <= WIN_TTFT else "tie"


def _tiers(variants: list[ReplayVariant], default_router: str) -> list[list[ReplayVariant]]:
    """Run order, most needed first: the baseline and the default router, the other routers,
    the policies. Every tier covers every trace and load before the next starts, so a run cut
    short still has whole cells of the comparisons that matter most."""
    first = [
        v
        for v in variants
        if v == BASELINE or (v.router == default_router and v.policy == BASELINE.policy)
    ]
    routers = [v for v in variants if v.compares == "router" and v not in first]
    policies = [v for v in variants if v.compares == "policy"]
    return [t for t in (first, routers, policies) if t]


def _cell(
    cache: CellCache, trace: str, variants: list[ReplayVariant], seeds: list[int], rate: float
) -> list[dict[str, Any]]:
    """The entries of one trace x load cell from the cache (variants not replayed yet left out)."""
    entries = []
    for v in variants:
        keys = [cache.key((trace, v, s, rate)) for s in seeds]
        if all(k in cache.done for k in keys):
            entries.append(variant_entry(v, [cache.done[k]["stats"] for k in keys]))
    with_baseline_ratios(entries)
    for e in entries:
        e["verdict"] = verdict(e.get("vs_baseline", {}))
        del e["runs"]
    return entries


def run_matrix(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    registry = get_registry()
    routers = [n for n in registry.names("router") if n not in ("round_robin", "experiment")]
    policies = [n for n in registry.names("policy") if n != "fifo"]
    routers = [r for r in routers if r in args.routers] if args.routers else routers
    policies = [p for p in policies if p in args.policies] if args.policies else policies
    variants = build_variants(routers, policies)
    seeds = list(range(args.seeds))
    offsets: dict[str, list[int]] = {}
    # Options given to every variant alike (the baseline too).
    engine = {"scheduling_policy": "priority"} if args.engine_priority else {}
    coordinator = {"adaptive_concurrency": True} if args.adaptive_concurrency else {}
    sources = dict(trace_source(spec) for spec in args.traces)
    args.traces = list(sources)
    for trace, source in sources.items():
        _SETUPS[trace], offsets[trace] = make_setup(
            source, args.window, args.seeds, engine, coordinator
        )
    tag = f"w{args.window}|{json.dumps(engine, sort_keys=True)}|{json.dumps(coordinator, sort_keys=True)}"
    cache = CellCache(
        Path(args.cache or RESULTS / f"{args.name}.cells.jsonl"), tag, args.report_only
    )
    _log(f"{len(cache.done)} replays cached in {cache.path}", t0)
    ctx = mp.get_context("fork")
    doc: dict[str, Any] = {
        "description": __doc__,
        "traces": {},
        "window": args.window,
        "seeds": seeds,
        "loads": sorted(args.loads),
        "capacity_tolerance": args.tolerance,
        "slo_ttft_ms": SLO_TTFT_MS,
        "slo_tpot_ms": SLO_TPOT_MS,
        "fleet": f"{INSTANCES} x {PRESET}, {KV_BLOCKS} KV blocks, {IN_FLIGHT} in flight each",
        "baseline": BASELINE.name,
        "variants": [v.name for v in variants],
        "engine_options": engine,
        "coordinator_options": coordinator,
    }

    def write(final: bool) -> None:
        doc["wall_s"] = time.perf_counter() - t0
        doc["environment"] = provenance()
        doc["complete"] = final
        write_outputs(doc, args.name)

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        # 1. The sustainable throughput of every trace (it sets the loads), all traces at once.
        sat_jobs = [(t, BASELINE, sd, SATURATING_RPS) for t in args.traces for sd in seeds]
        try:
            sat = cache.run(pool, sat_jobs)
        except Missing:
            sat = [cache.done.get(cache.key(j)) or {"saturated_rps": None} for j in sat_jobs]
        caps: dict[str, float] = {}
        for i, trace in enumerate(args.traces):
            mine = sat[i * len(seeds) : (i + 1) * len(seeds)]
            rates = [r["saturated_rps"] for r in mine if r["saturated_rps"] is not None]
            cap = float(np.mean(rates)) if len(rates) == len(seeds) else 0.0
            caps[trace] = cap
            tdoc: dict[str, Any] = {
                "source": sources[trace],
                "window_offsets": offsets[trace],
                "sustainable_rps": cap,
                "sustainable_rps_per_seed": [r["saturated_rps"] for r in mine],
                "cells": {},
                "capacity": {},
            }
            if cap <= 0:
                tdoc["error"] = "no queue formed: the window is smaller than the fleet's slots"
            doc["traces"][trace] = tdoc
            _log(f"{trace}: sustainable throughput (round_robin+fifo) {cap:.3g} req/s", t0)
        live = [t for t in args.traces if caps[t] > 0]

        def refresh() -> None:
            for trace in live:
                for load in sorted(args.loads):
                    rate = load * caps[trace]
                    entries = _cell(cache, trace, variants, seeds, rate)
                    doc["traces"][trace]["cells"][f"{load:.2f}"] = {
                        "rate_rps": rate,
                        "variants": entries,
                    }

        # 2. Every trace x load cell, tier by tier.
        for tier in _tiers(variants, args.default_router):
            jobs = [
                (t, v, s, load * caps[t])
                for load in args.loads  # their order on the command line is the run order
                for t in live
                for v in tier
                for s in seeds
            ]
            try:
                cache.run(pool, jobs)
            except Missing:
                pass
            refresh()
            write(False)
            for trace in live:
                for key, cell in doc["traces"][trace]["cells"].items():
                    summary = ", ".join(
                        f"{e['name']} {e['vs_baseline']['ttft_ms_p90'] or float('nan'):.2f}x"
                        for e in cell["variants"]
                        if "vs_baseline" in e
                    )
                    _log(f"{trace} load {float(key):.0%}: P90 TTFT {summary}", t0)
        # 3. Capacity at SLO: one bisection per trace x variant, several at once so the
        # worker processes stay busy (each probe replays every seed).
        cap_variants = (
            variants if args.capacity == "all" else [BASELINE] * (args.capacity != "none")
        )
        if args.capacity_routers:
            cap_variants = [v for v in cap_variants if v.router in args.capacity_routers]
        tasks = [(t, v) for t in live for v in cap_variants]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as threads:
            found = threads.map(
                lambda tv: capacity_of(
                    cache,
                    pool,
                    tv[0],
                    tv[1],
                    seeds,
                    caps[tv[0]],
                    1.25,
                    args.tolerance,
                    [load * caps[tv[0]] for load in args.loads],
                ),
                tasks,
            )
            for (trace, v), res in zip(tasks, found, strict=True):
                doc["traces"][trace]["capacity"][v.name] = res
    refresh()
    complete = all(
        len(c["variants"]) == len(variants)
        for t in live
        for c in doc["traces"][t]["cells"].values()
    ) and all(
        r.get("capacity_rps") is not None
        for t in live
        for r in doc["traces"][t]["capacity"].values()
    )
    write(complete and len(live) == len(args.traces))
    return doc


def write_outputs(doc: dict[str, Any], name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(doc))
    plot(doc, RESULTS / f"{name}.png")


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    desc = (doc["description"] or "").split("Run:")[0].strip()
    lines = [
        "# Benchmark matrix: traces x loads x seeds, every router and policy",
        "",
        desc,
        "",
        ("" if doc.get("complete") else "**Partial run: cells marked 'not run' are missing.** ")
        + f"This run: windows of {doc['window']} requests, seeds {doc['seeds']}, loads "
        f"{', '.join(f'{x:.0%}' for x in doc['loads'])}, capacity tolerance "
        f"{doc['capacity_tolerance']:.0%}; {doc['wall_s'] / 60:.0f} min wall. "
        + provenance_line(env),
        "",
        f"Options for every variant: engines {doc.get('engine_options') or 'defaults'}, "
        f"coordinator {doc.get('coordinator_options') or 'defaults'}.",
        "",
    ]
    tally: dict[str, dict[str, int]] = {}
    for trace, tdoc in doc["traces"].items():
        caps = tdoc.get("capacity", {})
        base_cap = caps.get(BASELINE.name, {}).get("capacity_rps", 0.0)
        lines += [
            f"## {trace}",
            "",
            f"Windows at rows {tdoc['window_offsets']}; sustainable throughput (100 % load) "
            f"{tdoc.get('sustainable_rps', 0.0):.3g} req/s; round_robin+fifo capacity at SLO "
            + (f"{base_cap:.3g} req/s." if base_cap else "not measured."),
            "",
        ]
        if "error" in tdoc:
            lines += [tdoc["error"], ""]
            continue
        loads = list(tdoc["cells"])
        head = ["variant"] + [f"{float(x):.0%} load: P90 TTFT ms (x), goodput x" for x in loads]
        head += ["capacity at SLO req/s (x)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in doc["variants"]:
            cells = [f"`{name}`"]
            for load in loads:
                e = next((v for v in tdoc["cells"][load]["variants"] if v["name"] == name), None)
                if e is None or "vs_baseline" not in e:
                    cells.append("not run")
                    continue
                r = e["vs_baseline"]
                p90 = e["ttft_ms"]["p90"]
                mark = {"win": " **win**", "loss": " *loss*"}.get(e["verdict"], "")
                cells.append(
                    f"{p90:.0f} ({r['ttft_ms_p90']:.2f}x), {r['goodput_rps']:.2f}x{mark}"
                    if p90 is not None and r["ttft_ms_p90"] is not None
                    else "-"
                )
                if name != BASELINE.name:
                    t = tally.setdefault(name, {"win": 0, "tie": 0, "loss": 0, "n/a": 0})
                    t[e["verdict"]] += 1
            c = caps.get(name, {}).get("capacity_rps")
            br = caps.get(name, {}).get("bracket") or [None, None]
            # The bracket (highest rate met, lowest missed) shown with every capacity; the
            # ratio only when the baseline's capacity was searched in this run.
            within = f" [{br[0]:.3g}-{br[1]:.3g}]" if br[0] and br[1] else ""
            cells.append(
                "-"
                if c is None
                else f"{c:.3g}{within} ({c / base_cap:.2f}x)"
                if base_cap
                else f"{c:.3g}{within}"
            )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Wins and losses (cells, all traces and loads)", ""]
    lines += ["| variant | wins | ties | losses |", "|---|---|---|---|"]
    for name, t in tally.items():
        lines.append(f"| `{name}` | {t['win']} | {t['tie']} | {t['loss']} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = [t for t, d in doc["traces"].items() if d.get("cells")]
    fig, axes = plt.subplots(1, max(1, len(traces)), figsize=(5 * max(1, len(traces)), 4.2))
    axes = np.atleast_1d(axes)
    for ax, trace in zip(axes, traces, strict=False):
        cells = doc["traces"][trace]["cells"]
        loads = [float(x) for x in cells]
        for name in doc["variants"]:
            ys = []
            for key in cells:
                e = next((v for v in cells[key]["variants"] if v["name"] == name), None)
                r = (e or {}).get("vs_baseline", {})
                ys.append(r.get("ttft_ms_p90") or float("nan"))
            style = "k--" if name == BASELINE.name else "-o"
            ax.plot([100 * x for x in loads], ys, style, label=name, markersize=3)
        ax.set_title(f"{trace}: P90 TTFT / round_robin+fifo", fontsize=9)
        ax.set_xlabel("load (% of sustainable throughput)")
        ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--traces",
        nargs="+",
        default=list(TRACES),
        metavar="TRACE",
        help=f"bundled names ({', '.join(TRACES)}), trace files or NAME=FILE (default: bundled)",
    )
    p.add_argument("--window", type=int, default=2000, help="requests per window (default 2000)")
    p.add_argument("--seeds", type=int, default=3, help="seeds = windows per trace (default 3)")
    p.add_argument(
        "--loads",
        type=float,
        nargs="+",
        default=list(LOADS),
        help="fractions of the sustainable throughput; their order is the run order",
    )
    p.add_argument("--tolerance", type=float, default=0.10, help="capacity bisection tolerance")
    p.add_argument("--routers", nargs="*", help="subset of routers (default: every built-in)")
    p.add_argument("--policies", nargs="*", help="subset of policies (default: every built-in)")
    p.add_argument(
        "--capacity",
        choices=("all", "baseline", "none"),
        default="all",
        help="capacity at SLO for every variant (default), the baseline only, or none",
    )
    p.add_argument(
        "--capacity-routers",
        nargs="+",
        help="search the capacity only for the variants of these routers (default: every "
        "variant --capacity names); the baseline's is then the one already recorded",
    )
    p.add_argument(
        "--adaptive-concurrency",
        action="store_true",
        help="coordinator option adaptive_concurrency=True for every variant",
    )
    p.add_argument(
        "--engine-priority",
        action="store_true",
        help="engines run vLLM's --scheduling-policy priority, for every variant",
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--name", default="matrix", help="result file stem (default matrix)")
    p.add_argument(
        "--cache",
        help="JSON-lines file of finished replays; a re-run resumes from it "
        "(default benchmarks/results/<name>.cells.jsonl)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="replay nothing: write the result files from the cache (missing cells marked)",
    )
    p.add_argument(
        "--default-router",
        default=ControlPlaneOptions().routing_strategy,
        help="router run first, with the baseline (default: the coordinator's default)",
    )
    args = p.parse_args(argv)
    if args.window < 1 or args.seeds < 1 or args.jobs < 1:
        p.error("--window, --seeds and --jobs must be at least 1")
    for spec in args.traces:
        try:
            trace_source(spec)
        except ValueError as exc:
            p.error(str(exc))
    doc = run_matrix(args)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
