"""Decision cost of policy + router per request, by fleet size and queue length.

What is timed: one dispatch decision as the coordinator makes it — peek the head of the
policy's heap, filter eligible instances (health, model, capacity), let the policy/router
choose, pop the request — plus pushing one new request (so the queue length stays fixed).
The real `Dispatcher.candidates` and the registered policy/router objects are used; no HTTP.
Goal (issue 2): p50 under 50 us at 64 instances; growing with instances, not with the queue.

Run: python -m benchmarks.bench_decision_cost [--decisions 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine, write_results
from sage_cp_plugin import ControlPlaneManager, ExecutionInstance, RequestMetadata, RequestPriority
from sage_cp_plugin.policies.base import make_item

COMBOS = [
    ("fifo", "round_robin"),
    ("fifo", "load_balanced"),
    ("priority", "affinity"),
    ("slo_aware", "prefix_aware"),
    ("cost_optimized", "load_balanced"),
    ("adaptive", "kv_aware"),
]
INSTANCES = [8, 64, 512]
QUEUES = [100, 10_000]


def request(rng: random.Random, i: int) -> RequestMetadata:
    return RequestMetadata(
        request_id=f"r{i}",
        prompt=f"tenant {rng.randrange(16)} system prompt " * 8 + f"question {i}",
        max_tokens=rng.choice([16, 64, 256]),
        priority=RequestPriority(rng.randrange(5)),
        slo_deadline_ms=rng.choice([None, 500.0, 2000.0]),
        user_id=f"user{rng.randrange(1000)}",
    )


async def measure(
    policy: str, router: str, n_inst: int, queue_len: int, decisions: int
) -> dict[str, Any]:
    rng = random.Random(0)
    m = ControlPlaneManager(
        scheduling_policy=policy,
        routing_strategy=router,
        enable_monitoring=False,
        enable_pd_separation=False,
        max_pending_requests=queue_len + decisions + 10,
    )
    for k in range(n_inst):
        m.register_instance(
            ExecutionInstance(
                instance_id=f"i{k}",
                port=8000 + k % 50000,
                model_name="m",
                max_concurrent_requests=64,
                price_per_1k_tokens=0.1 + (k % 4) * 0.1,
            )
        )
    now = asyncio.get_running_loop().time()
    for k in range(queue_len):
        item = make_item(request(rng, k), now=now + k * 1e-4, seq=k)
        item.key = m.scheduling_policy.key(item)
        m.queue.push(item)
    fresh = [
        make_item(request(rng, queue_len + k), now=now + 10, seq=queue_len + k)
        for k in range(decisions)
    ]
    pool = m.queue.pools()[0]
    d = m.dispatcher
    samples = np.empty(decisions)
    states = list(m.fleet)
    for k in range(decisions):
        # Random in-flight load, as a live fleet has; not timed.
        for s in rng.sample(states, min(8, len(states))):
            s.in_flight = rng.randrange(0, 64)
        newcomer = fresh[k]
        t0 = time.perf_counter_ns()
        m.fleet.now = now
        m.scheduling_policy.tick(m.fleet, len(m.queue), now)
        item = m.queue.peek(pool)
        assert item is not None
        cands, _ = d.candidates(item)
        chosen = m.scheduling_policy.select_instance(item, cands, m.router, m.fleet)
        m.queue.pop(pool)
        if chosen is not None:
            m.router.on_dispatch(item, chosen)
        newcomer.key = m.scheduling_policy.key(newcomer)
        m.queue.push(newcomer)
        samples[k] = (time.perf_counter_ns() - t0) / 1000.0
    return {
        "policy": policy,
        "router": router,
        "instances": n_inst,
        "queue": queue_len,
        "p50_us": float(np.percentile(samples, 50)),
        "p99_us": float(np.percentile(samples, 99)),
        "mean_us": float(samples.mean()),
    }


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, q in zip(axes, QUEUES, strict=True):
        for policy, router in COMBOS:
            ys = [
                r["p50_us"]
                for r in rows
                if (r["policy"], r["router"], r["queue"]) == (policy, router, q)
            ]
            ax.plot(INSTANCES, ys, marker="o", label=f"{policy}+{router}")
        ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("instances")
        ax.set_title(f"queue length {q:,}")
    axes[0].set_ylabel("p50 decision cost (us)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Decision cost per request (policy + router)")
    fig.tight_layout()
    fig.savefig(RESULTS / "decision_cost.png", dpi=110)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=2000)
    args = ap.parse_args()
    rows = []
    for policy, router in COMBOS:
        for n in INSTANCES:
            for q in QUEUES:
                rows.append(await measure(policy, router, n, q, args.decisions))
                r = rows[-1]
                print(
                    f"{policy:>15}+{router:<13} inst={n:<4} queue={q:<6} p50={r['p50_us']:7.1f}us p99={r['p99_us']:7.1f}us"
                )
    md = [
        "# Decision cost per request (policy + router)",
        "",
        f"Machine: {machine()['cpu']}, {machine()['cores']} cores, Python {machine()['python']}.",
        f"Workload: {args.decisions} decisions per cell; queue pre-filled with mixed priorities, "
        "deadlines, users and shared prompt prefixes; random in-flight load. Timed: peek + "
        "eligibility filter + policy/router choice + pop + push of a new request. No HTTP.",
        "Goal: p50 < 50 us at 64 instances; flat in queue length.",
        "",
        "| policy | router | instances | p50 us (queue 100) | p50 us (queue 10,000) | ratio 10k/100 | p99 us (10,000) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for policy, router in COMBOS:
        for n in INSTANCES:
            a = next(
                r
                for r in rows
                if (r["policy"], r["router"], r["instances"], r["queue"])
                == (policy, router, n, 100)
            )
            b = next(
                r
                for r in rows
                if (r["policy"], r["router"], r["instances"], r["queue"])
                == (policy, router, n, 10_000)
            )
            md.append(
                f"| {policy} | {router} | {n} | {a['p50_us']:.1f} | {b['p50_us']:.1f} | "
                f"{b['p50_us'] / a['p50_us']:.2f} | {b['p99_us']:.1f} |"
            )
    md.append("")
    md.append("![decision cost](decision_cost.png)")
    write_results("decision_cost", {"machine": machine(), "rows": rows}, "\n".join(md) + "\n")
    plot(rows)


if __name__ == "__main__":
    asyncio.run(main())
