"""Decision cost inside a real replay, two checkouts of the code alternated in one run.

The same replay as `benchmarks.decision_cost_replay` (the whole coordinator on the virtual
clock against in-process simulators, Azure 2023 code trace at 70 % of the fleet's capacity,
the pure decision `plan_head` timed per dispatched request), run from checkout A and then
from checkout B for every (fleet size, router) row, so both see the same machine in the same
minutes. On a busy machine only the thread-CPU figures (`plan_cpu_us_*`) and their ratio mean
anything; the load average is recorded per run. Each run also records the chosen instance of
every request: the two checkouts must make the same decisions (`same_decisions`).
With `--pairs N` each row is run N times, A first in odd pairs and B first in even ones (a
trend in the machine's load then favours neither), and the median of the pairs' A/B ratios
is reported with every pair's figures.

usage: python -m benchmarks.decision_cost_replay_ab --a /path/to/main --b . \
           --instances 64,256 --routers round_robin,prefix_aware --n 3000 [--pairs 3] \
           [--objectives 1000/100]
Writes benchmarks/results/decision_cost_replay_ab.{json,md} (`--name`), after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write_results

GOAL_US = {64: 50, 256: 100}

# Run in a child process with the checkout first on sys.path; only APIs both sides have.
_CHILD = """
import hashlib, json, os, sys, time
from benchmarks.routing_quick import SLOTS, at_load, capacity_rps
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.workloads import AZURE_CODE, load_azure

n_inst, router, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
objectives = sys.argv[4] if len(sys.argv) > 4 else "none"
ttft, tpot = (float(x) for x in objectives.split("/")) if objectives != "none" else (None, None)
w = load_azure(AZURE_CODE, limit=n, max_input_tokens=16384)
w = at_load(w, 0.7 * capacity_rps(w) * n_inst / 8)
w = [r.model_copy(update={"ttft_slo_ms": ttft, "tpot_slo_ms": tpot}) for r in w]
members = [
    MemberSpec(SimInstanceConfig(seed=i, num_kv_blocks=8192), max_concurrent_requests=SLOTS)
    for i in range(n_inst)
]
t = time.time()
res = run_replay(w, InProcessFleet(members), CoordinatorConfig(router=router))
d = res.decision
chosen = "|".join(str(o.instance_id) for o in res.outcomes)
print(json.dumps({
    "plan_decisions": d["plan_decisions"],
    "plan_cpu_us_p50": d["plan_cpu_us_p50"], "plan_cpu_us_p99": d["plan_cpu_us_p99"],
    "plan_us_p50": d["plan_us_p50"], "us_per_decision_mean": d["us_per_decision"],
    "decisions_sha": hashlib.sha256(chosen.encode()).hexdigest()[:16],
    "wall_s": time.time() - t, "loadavg_1m": os.getloadavg()[0],
}))
"""


def _commit(checkout: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + (" (with uncommitted changes)" if dirty else "")


def run_in_checkout(checkout: Path, script: str, args: list[str], what: str) -> dict[str, Any]:
    """Run `script` (python -c, with `args`) with `checkout` first on the path, in a scratch
    directory (nothing is written into either checkout); its last output line is JSON."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True
        )
    if out.returncode != 0:
        raise SystemExit(f"replay failed in {checkout} ({what}):\n{out.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def run_side(
    checkout: Path, n_inst: int, router: str, n: int, objectives: str | None = None
) -> dict[str, Any]:
    args = [str(n_inst), router, str(n), objectives or "none"]
    return run_in_checkout(checkout, _CHILD, args, f"{n_inst}, {router}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, type=Path, help="checkout A (the baseline)")
    ap.add_argument("--b", required=True, type=Path, help="checkout B")
    ap.add_argument("--instances", default="64,256")
    ap.add_argument("--routers", default="round_robin,prefix_aware")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--name", default="decision_cost_replay_ab")
    ap.add_argument("--pairs", type=int, default=1, help="runs of each row, alternating order")
    ap.add_argument("--objectives", default=None, help="TTFT_MS/TPOT_MS of every request")
    a = ap.parse_args()
    a.a, a.b = a.a.resolve(), a.b.resolve()
    for side in (a.a, a.b):
        if not (side / "sage_cp_plugin" / "__init__.py").is_file():
            raise SystemExit(f"{side} is not a checkout of this repository")
    commits = {"a": _commit(a.a), "b": _commit(a.b)}
    rows: list[dict[str, Any]] = []
    for n_inst in (int(x) for x in a.instances.split(",")):
        for router in a.routers.split(","):
            pairs = []
            for i in range(a.pairs):
                first, second = (a.a, a.b) if i % 2 == 0 else (a.b, a.a)
                r1 = run_side(first, n_inst, router, a.n, a.objectives)
                r2 = run_side(second, n_inst, router, a.n, a.objectives)
                ra, rb = (r1, r2) if i % 2 == 0 else (r2, r1)
                pairs.append({"a": ra, "b": rb, "a_first": i % 2 == 0})
            ratios = [p["a"]["plan_cpu_us_p50"] / p["b"]["plan_cpu_us_p50"] for p in pairs]
            row = {
                "instances": n_inst,
                "router": router,
                "requests": a.n,
                "objectives": a.objectives,
                "a": pairs[0]["a"],
                "b": pairs[0]["b"],
                "pairs": pairs,
                "ratio_median": statistics.median(ratios),
                "same_decisions": all(
                    p["a"]["decisions_sha"] == p["b"]["decisions_sha"] for p in pairs
                ),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(a.name, {"commits": commits, "rows": rows}, _markdown(commits, rows))


def _markdown(commits: dict[str, str], rows: list[dict[str, Any]]) -> str:
    md = [
        "# Decision cost in a real replay: A vs B alternated in one run (issue 10)",
        "",
        __doc__.split("usage:")[0].strip(),
        "",
        f"A = `{commits['a']}`, B = `{commits['b']}`.",
        "",
        "| instances | router | objectives | pair (first) | decisions | A plan p50 us CPU "
        "| B plan p50 us CPU | A/B | A p99 CPU | B p99 CPU | goal p50 us | same decisions "
        "| load avg (A, B) |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        pairs = r.get("pairs") or [{"a": r["a"], "b": r["b"], "a_first": True}]
        for i, p in enumerate(pairs, start=1):
            ra, rb = p["a"], p["b"]
            ratio = ra["plan_cpu_us_p50"] / rb["plan_cpu_us_p50"]
            same = ra["decisions_sha"] == rb["decisions_sha"]
            md.append(
                f"| {r['instances']} | {r['router']} | {r.get('objectives') or 'none'} "
                f"| {i} ({'A' if p['a_first'] else 'B'}) | {rb['plan_decisions']} "
                f"| {ra['plan_cpu_us_p50']:.1f} | {rb['plan_cpu_us_p50']:.1f} | {ratio:.2f}x "
                f"| {ra['plan_cpu_us_p99']:.1f} | {rb['plan_cpu_us_p99']:.1f} "
                f"| {GOAL_US.get(r['instances'], '-')} | {'yes' if same else 'NO'} "
                f"| {ra['loadavg_1m']:.1f}, {rb['loadavg_1m']:.1f} |"
            )
        if len(pairs) > 1:
            md.append(
                f"| {r['instances']} | {r['router']} | {r.get('objectives') or 'none'} "
                f"| **median of {len(pairs)}** | | | | **{r['ratio_median']:.2f}x** "
                "| | | | | |"
            )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
