"""Decision cost inside a real replay (not a micro-benchmark), per router and fleet size.

The whole coordinator runs on the virtual clock against in-process simulators (Llama-3.1-8B
/H100 sims, 64 in flight each); `DecisionCostProbe` times the pure decision
(`planning.plan_head`) with perf_counter_ns around every call that dispatched a request
(`plan_us_p50`, `plan_us_p99`: the goal's figure), and every whole dispatch round divided by
the requests it dispatched (`us_per_decision_mean`: the decision plus launching it). Workload: Azure 2023 code trace lengths (its first
`n` rows) at 70 % of the fleet's step-model capacity, SLO-free.
Goal (issue 10): p50 <= 50 us at 64 instances and <= 100 us at 256.
Each call is timed in wall time and in the thread's CPU time (`plan_cpu_us_*`); on a busy
machine only the CPU figures mean anything (the load average is recorded per row).

usage: python -m benchmarks.decision_cost_replay --instances 64,256 --n 3000 [--objectives 1000/100]
Writes benchmarks/results/decision_cost_replay.{json,md} (`--name` to change), rewritten after
every row so a long run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from benchmarks.common import write_results
from benchmarks.routing_quick import SLOTS, at_load, capacity_rps
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.workloads import AZURE_CODE, WorkloadRecord, load_azure


def workload(
    n_inst: int, n: int, ttft_ms: float | None = None, tpot_ms: float | None = None
) -> list[WorkloadRecord]:
    """The first `n` Azure code rows at 70 % of `n_inst` instances' capacity, SLO-free unless
    objectives are given (they widen `prefix_aware`'s tie window, `routing/tie_tolerance.py`,
    so its scan predicts more candidates)."""
    w = load_azure(AZURE_CODE, limit=n, max_input_tokens=16384)
    w = at_load(w, 0.7 * capacity_rps(w) * n_inst / 8)
    return [r.model_copy(update={"ttft_slo_ms": ttft_ms, "tpot_slo_ms": tpot_ms}) for r in w]


def fleet(n_inst: int) -> InProcessFleet:
    """`n_inst` simulated Llama-3.1-8B/H100 instances, 8,192 KV blocks, SLOTS in flight each."""
    members = [
        MemberSpec(SimInstanceConfig(seed=i, num_kv_blocks=8192), max_concurrent_requests=SLOTS)
        for i in range(n_inst)
    ]
    return InProcessFleet(members)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", default="64,256")
    ap.add_argument("--routers", default="round_robin,prefix_aware")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--name", default="decision_cost_replay")
    ap.add_argument(
        "--objectives",
        default=None,
        help="TTFT_MS/TPOT_MS carried by every request (e.g. 1000/100, the matrix's); none: SLO-free",
    )
    a = ap.parse_args()
    ttft_ms, tpot_ms = (float(x) for x in a.objectives.split("/")) if a.objectives else (None, None)
    rows: list[dict[str, Any]] = []
    for n_inst in (int(x) for x in a.instances.split(",")):
        w = workload(n_inst, a.n, ttft_ms, tpot_ms)
        for router in a.routers.split(","):
            t = time.time()
            res = run_replay(w, fleet(n_inst), CoordinatorConfig(router=router))
            d = res.decision
            row = {
                "instances": n_inst,
                "router": router,
                "requests": a.n,
                "objectives": a.objectives,
                "plan_decisions": d["plan_decisions"],
                "plan_us_p50": d["plan_us_p50"],
                "plan_us_p99": d["plan_us_p99"],
                "plan_cpu_us_p50": d["plan_cpu_us_p50"],
                "plan_cpu_us_p99": d["plan_cpu_us_p99"],
                "us_per_decision_mean": d["us_per_decision"],
                "by_queue_length": d["by_queue_length"],
                "wall_s": time.time() - t,
                "loadavg_1m": os.getloadavg()[0],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(a.name, {"rows": rows, "goal_us_p50": GOAL_US}, _markdown(rows))


GOAL_US = {64: 50, 256: 100}


def _markdown(rows: list[dict[str, Any]]) -> str:
    def us(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    md = [
        "# Decision cost inside a real replay (issue 10)",
        "",
        __doc__.split("usage:")[0].strip(),
        "",
        "| instances | router | objectives (TTFT/TPOT ms) | decisions | plan p50 us CPU (wall) | plan p99 us CPU (wall) "
        "| goal p50 us | round us/decision (wall) | load avg 1m |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['instances']} | {r['router']} | {r.get('objectives') or 'none'} "
            f"| {r['plan_decisions']} "
            f"| {us(r['plan_cpu_us_p50'])} ({us(r['plan_us_p50'])}) "
            f"| {us(r['plan_cpu_us_p99'])} ({us(r['plan_us_p99'])}) "
            f"| {GOAL_US.get(r['instances'], '-')} | {us(r['us_per_decision_mean'])} "
            f"| {r['loadavg_1m']:.1f} |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
