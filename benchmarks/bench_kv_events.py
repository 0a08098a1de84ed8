"""Exact (KV events) vs approximate prefix index, on the Mooncake trace, virtual clock.

Question: when engines evict, does routing from their own KV-cache events serve more of the
prompt from cache, and what does that do to TTFT, against the index of what was sent where?

Same everything for every variant: 8 simulated Llama-3.1-8B/H100 instances (the preset's 8192
KV blocks of 16 tokens, 64 requests in flight each), the same windows, the same arrival times.
Variants: round_robin (the baseline), prefix_aware with the approximate view (no events),
prefix_aware with the simulators publishing KV events (`MemberSpec(kv_events=True)`), kv_aware
likewise, and prefix_aware both ways when the instances' KV capacity is not stated to the
coordinator (as in a plain vLLM instance list: the approximate view then cannot model evictions).

Windows are chosen by rule: ``--windows`` windows of ``--requests`` rows spread evenly over the
whole trace (first at row 0, last ending at the last row). Arrival rate, by rule too: 80 % of
the fleet's cache-blind prefill capacity, ``0.8 * instances / (mean prompt tokens * b1)``, with
b1 the preset's prefill cost per token.

Run: python benchmarks/bench_kv_events.py [--requests 600]   (the bundled traces; SAGE_CP_TRACES for your own)
Writes benchmarks/results/kv_events.{json,md,png}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine, write_results
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.sim.presets import DEFAULT_PRESET, PRESETS
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.virtual.summary import summarize
from sage_cp_plugin.workloads import load_mooncake, time_scaled

INSTANCES = 8
LOAD = 0.8
TRACE_ROWS = 3993  # rows in mooncake_synthetic.jsonl
VARIANTS = [  # (label, router, kv events?, KV capacity stated to the coordinator?)
    ("round_robin", "round_robin", False, True),
    ("prefix_aware (approximate)", "prefix_aware", False, True),
    ("prefix_aware (events)", "prefix_aware", True, True),
    ("kv_aware (approximate)", "kv_aware", False, True),
    ("kv_aware (events)", "kv_aware", True, True),
    # A vLLM server's KV size is not part of its usual description: without it the
    # approximate view cannot model evictions at all; the events do not need it.
    ("prefix_aware (approximate, capacity unknown)", "prefix_aware", False, False),
    ("prefix_aware (events, capacity unknown)", "prefix_aware", True, False),
]
COLUMNS = [
    ("ttft_ms_p50", "TTFT p50 ms"),
    ("ttft_ms_p90", "TTFT p90 ms"),
    ("output_tokens_per_s", "output tok/s"),
    ("cached_share", "prompt tokens from cache"),
    ("decision_us", "decision us/req (mean)"),
]


def run(requests: int, windows: int) -> dict[str, Any]:
    b1 = PRESETS[DEFAULT_PRESET].b1_us_per_token * 1e-6
    span = TRACE_ROWS - requests
    starts = [round(k * span / max(1, windows - 1)) for k in range(windows)]
    cells: list[dict[str, Any]] = []
    for w, start in enumerate(starts):
        work = load_mooncake(limit=requests, start=start, max_input_tokens=16384)
        mean_in = float(np.mean([r.input_tokens for r in work]))
        rate = LOAD * INSTANCES / (mean_in * b1)
        work = time_scaled(work, rate)
        for label, router, events, capacity_known in VARIANTS:
            members = []
            for i in range(INSTANCES):
                cfg = SimInstanceConfig(seed=w * 10 + i)
                hidden = {"metadata": {"max_num_batched_tokens": cfg.max_num_batched_tokens}}
                members.append(
                    MemberSpec(
                        cfg,
                        max_concurrent_requests=64,
                        kv_events=events,
                        extra={} if capacity_known else hidden,
                    )
                )
            fleet = InProcessFleet(members)
            t0 = time.perf_counter()
            result = run_replay(work, fleet, CoordinatorConfig(router=router), prompt_seed=w)
            s = summarize(result)
            a = s["all"]
            cell = {
                "window_start": start,
                "rate_rps": rate,
                "variant": label,
                "completed": a["completed"],
                "ttft_ms_p50": a["ttft_ms_p50"],
                "ttft_ms_p90": a["ttft_ms_p90"],
                "output_tokens_per_s": a["output_tokens_per_s"],
                "cached_share": 1.0 - s["prompt_tokens_computed_share"],
                "decision_us": s["decision"].get("us_per_decision", float("nan")),
                "wall_s": time.perf_counter() - t0,
            }
            cells.append(cell)
            print(f"window {start}: {label}: " + ", ".join(f"{k}={cell[k]:.3g}"
                  for k, _ in COLUMNS), flush=True)  # fmt: skip
    return {
        "benchmark": "kv_events",
        "machine": machine(),
        "workload": {
            "trace": "mooncake_synthetic.jsonl",
            "requests_per_window": requests,
            "window_starts": starts,
            "load": LOAD,
            "max_input_tokens": 16384,
        },
        "fleet": {"instances": INSTANCES, "preset": DEFAULT_PRESET, "max_in_flight": 64},
        "baseline": "round_robin",
        "cells": cells,
    }


def markdown(data: dict[str, Any]) -> str:
    m, wl = data["machine"], data["workload"]
    lines = [
        "# KV-event index vs approximate prefix index (Mooncake, virtual clock)",
        "",
        f"Commit {m['commit']}, {m['cpu']} ({m['cores']} cores, load {m['loadavg_1m']:.1f}). "
        f"{data['fleet']['instances']} x {data['fleet']['preset']}, 64 in flight each; "
        f"windows of {wl['requests_per_window']} requests starting at rows "
        f"{wl['window_starts']} (evenly spaced); arrival rate {wl['load']:.0%} of cache-blind "
        "prefill capacity. Baseline: round_robin. Ratios are vs round_robin in the same window.",
        "",
        "| window | variant | " + " | ".join(h for _, h in COLUMNS) + " | P90 TTFT vs rr |",
        "|---|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    base = {c["window_start"]: c for c in data["cells"] if c["variant"] == "round_robin"}
    for c in data["cells"]:
        vals = []
        for k, _ in COLUMNS:
            v = c[k]
            vals.append(
                f"{v:.1%}" if k == "cached_share" else f"{v:.0f}" if v >= 10 else f"{v:.2f}"
            )
        r = c["ttft_ms_p90"] / base[c["window_start"]]["ttft_ms_p90"]
        lines.append(
            f"| {c['window_start']} | {c['variant']} | " + " | ".join(vals) + f" | {r:.2f}x |"
        )
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [v[0] for v in VARIANTS]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, title in ((axes[0], "ttft_ms_p90", "P90 TTFT (ms)"),
                           (axes[1], "cached_share", "prompt tokens served from cache")):  # fmt: skip
        for w in data["workload"]["window_starts"]:
            ys = [next(c[key] for c in data["cells"] if c["window_start"] == w and c["variant"] == lb)
                  for lb in labels]  # fmt: skip
            ax.plot(range(len(labels)), ys, marker="o", label=f"window @{w}")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "kv_events.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--windows", type=int, default=3)
    args = p.parse_args()
    data = run(args.requests, args.windows)
    write_results("kv_events", data, markdown(data))
    plot(data)


if __name__ == "__main__":
    main()
