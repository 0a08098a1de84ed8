"""Capacity at SLO that no router can beat on the matrix's windows: an ideal prefill queue.

Every built-in load-aware router sends a request at once to the instance with the lowest
predicted TTFT, and each engine prefills its queue in arrival order. With exact predictions
that is a central first-come-first-served queue in front of the fleet: a request starts on the
instance that frees first. This computes that queue directly, without the simulator:
- instances: `bench_matrix.INSTANCES`, each a single server of prefill work at the preset's
  `b1` seconds per token plus one fixed step cost `b0` per 8,192-token chunk. Decode steps are
  left out (on Mooncake 5-12 % of the work: `prefill share` in the output), so the TTFT is
  lower than any real engine's: the capacity is an upper bound for FCFS engines;
- cache: none, or per request the prompt's leading blocks found in one least-recently-used
  cache the size of the whole fleet's KV (`cache_bound.hit_fraction`'s model: as if every
  request found the instance holding its prefix; the most any placement can cache);
- order: FCFS (what the routers and engines do) or shortest uncached prefill first
  (non-preemptive), the order a policy could impose, for comparison;
- SLO: P90 TTFT <= 1,000 ms over the middle 80 % of each window's arrivals, pooled over the
  windows, as the matrix's capacity search; arrivals are the trace's own, time-scaled to the
  rate (as `ReplaySetup.workload`). Capacity by bisection over the rate to 0.5 %.

Run: ``python -m benchmarks.ideal_queue_bound [--trace mooncake]``. Writes
benchmarks/results/ideal_queue_bound_<trace>.{json,md}.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks import bench_matrix as bm
from benchmarks.cache_bound import FLEET_BLOCKS, cached_tokens
from sage_cp_plugin.sim.presets import get_preset
from sage_cp_plugin.workloads.format import WorkloadRecord
from sage_cp_plugin.workloads.synthetic import evenly_spaced_windows, mean_rate
from sage_cp_plugin.workloads.traces import read_trace


def service_s(uncached: int, b0_s: float, b1_s: float, chunk: int) -> float:
    """Prefill time of `uncached` tokens alone on an instance (at least one step)."""
    return uncached * b1_s + max(1, math.ceil(uncached / chunk)) * b0_s


def ttfts(
    arrivals: Sequence[float], services: Sequence[float], servers: int, sjf: bool
) -> list[float]:
    """Each request's TTFT in a central queue over `servers`: FCFS, or the shortest queued
    service first when a server frees (non-preemptive)."""
    n = len(arrivals)
    out = [0.0] * n
    if not sjf:
        free = [0.0] * servers
        for i in range(n):
            start = max(arrivals[i], heapq.heappop(free))
            heapq.heappush(free, start + services[i])
            out[i] = start + services[i] - arrivals[i]
        return out
    free = [0.0] * servers
    queued: list[tuple[float, int]] = []
    i = 0
    while i < n or queued:
        t = heapq.heappop(free)
        # Admit everything that has arrived by the time this server frees (or the next arrival
        # when nothing waits: the server idles until then).
        if not queued and i < n and arrivals[i] > t:
            t = arrivals[i]
        while i < n and arrivals[i] <= t:
            heapq.heappush(queued, (services[i], i))
            i += 1
        s, j = heapq.heappop(queued)
        out[j] = t + s - arrivals[j]
        heapq.heappush(free, t + s)
    return out


def pooled_p90(
    windows: list[list[WorkloadRecord]], services: list[list[float]], rate: float, sjf: bool
) -> float:
    pooled: list[float] = []
    for w, sv in zip(windows, services, strict=True):
        k = mean_rate(w) / rate
        arr = [r.arrival_s * k for r in w]
        t = ttfts(arr, sv, bm.INSTANCES, sjf)
        a, b = len(w) // 10, len(w) - len(w) // 10  # the middle 80 % of arrivals
        pooled += t[a:b]
    return float(np.percentile(pooled, 90))


def capacity(
    windows: list[list[WorkloadRecord]], services: list[list[float]], sjf: bool, slo_s: float
) -> float:
    lo, hi = 1.0, 1.0
    while pooled_p90(windows, services, hi, sjf) <= slo_s:
        lo, hi = hi, hi * 2
    while hi / lo - 1 > 0.005:
        mid = math.sqrt(lo * hi)
        if pooled_p90(windows, services, mid, sjf) <= slo_s:
            lo = mid
        else:
            hi = mid
    return lo


def run(trace: str, window: int, seeds: int) -> dict[str, Any]:
    preset = get_preset(bm.PRESET)
    b0_s, b1_s, chunk = preset.b0_ms * 1e-3, preset.b1_us_per_token * 1e-6, 8192
    t = read_trace(trace, max_input_tokens=bm.MAX_INPUT_TOKENS)
    _, wins = evenly_spaced_windows(t.records, window, seeds)
    slo_s = bm.SLO_TTFT_MS / 1000
    rows = []
    for cache_name, cap in (("none", 0), ("fleet-sized LRU", FLEET_BLOCKS)):
        hits = [cached_tokens(w, cap) for w in wins]
        services = [
            [service_s(r.input_tokens - h, b0_s, b1_s, chunk) for r, h in zip(w, hs, strict=True)]
            for w, hs in zip(wins, hits, strict=True)
        ]
        frac = [sum(hs) / sum(r.input_tokens for r in w) for w, hs in zip(wins, hits, strict=True)]
        for order, sjf in (("FCFS", False), ("shortest prefill first", True)):
            rows.append(
                {
                    "cache": cache_name,
                    "order": order,
                    "cached_prompt_fraction_per_window": frac,
                    "capacity_rps": capacity(wins, services, sjf, slo_s),
                }
            )
    # How much of the work the model leaves out: decode, at one step per token shared by 64.
    dec = [
        float(np.mean([r.output_tokens for r in w]))
        * (b0_s + 64 * preset.b2_us_per_seq * 1e-6)
        / 64
        for w in wins
    ]
    pre = [float(np.mean([service_s(r.input_tokens, b0_s, b1_s, chunk) for r in w])) for w in wins]
    return {
        "trace": trace,
        "window": window,
        "seeds": seeds,
        "instances": bm.INSTANCES,
        "preset": bm.PRESET,
        "slo_ttft_ms": bm.SLO_TTFT_MS,
        "prefill_share_of_work_per_window": [p / (p + d) for p, d in zip(pre, dec, strict=True)],
        "rows": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    share = ", ".join(f"{s:.2f}" for s in doc["prefill_share_of_work_per_window"])
    lines = [
        f"# Ideal prefill queue on {doc['trace']}: the capacity no router can beat",
        "",
        "Generated by `benchmarks/ideal_queue_bound.py` (model in its docstring): "
        f"{doc['instances']} instances of {doc['preset']}, {doc['seeds']} windows of "
        f"{doc['window']} requests (the matrix's), P90 TTFT <= {doc['slo_ttft_ms']:.0f} ms "
        f"pooled. Decode left out (prefill share of the work per window: {share}), so each "
        "capacity is an upper bound for engines of that order.",
        "",
        "| cache | order | prompt from cache per window | capacity at TTFT SLO req/s |",
        "|---|---|---|---|",
    ]
    for r in doc["rows"]:
        frac = ", ".join(f"{f:.3f}" for f in r["cached_prompt_fraction_per_window"])
        lines.append(f"| {r['cache']} | {r['order']} | {frac} | {r['capacity_rps']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trace", default="mooncake", choices=bm.TRACES)
    p.add_argument("--window", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    if args.window < 10 or args.seeds < 1:
        p.error("--window must be at least 10 and --seeds at least 1")
    doc = run(args.trace, args.window, args.seeds)
    stem = bm.RESULTS / f"ideal_queue_bound_{args.trace}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
