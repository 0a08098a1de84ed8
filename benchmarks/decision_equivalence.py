"""Do two checkouts make the same decisions and the same replay? Several traces and routers.

A speed-only change to the decision path must change no decision. For each case (trace,
objectives, router, fleet size) the whole coordinator replays the trace on the virtual clock
against in-process simulators (the fleet of `benchmarks.decision_cost_replay`, at 70 % of its
capacity), once from each checkout in a fresh process, and two hashes are compared: of the
chosen instance of every request, and of every request's whole outcome (state, instance,
attempts, tokens, queue/TTFT/TPOT/E2E; virtual time makes them exact) plus the engines'
counters. Cases cover the paths a decision can take: prefix hits (Mooncake's shared
`hash_ids`), TTFT/TPOT objectives (the wider tie window), and routers reading the fleet
table's load columns (`load_balanced`) and KV columns (`kv_aware`).

usage: python -m benchmarks.decision_equivalence --a /path/to/main --b . [--n 1500]
Writes benchmarks/results/decision_equivalence.{json,md} (`--name`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import write_results
from benchmarks.decision_cost_replay_ab import _commit, run_in_checkout

# (trace, objectives "TTFT/TPOT" or None, router, instances)
CASES: tuple[tuple[str, str | None, str, int], ...] = (
    ("azure_code", None, "prefix_aware", 64),
    ("azure_code", "1000/100", "prefix_aware", 64),
    ("azure_conv", None, "prefix_aware", 64),
    ("mooncake", None, "prefix_aware", 64),
    ("mooncake", "1000/100", "prefix_aware", 256),
    ("azure_code", None, "load_balanced", 64),
    ("azure_code", None, "kv_aware", 64),
)

_CHILD = """
import dataclasses, hashlib, json, sys
from benchmarks.routing_quick import SLOTS, at_load, capacity_rps
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.workloads import AZURE_CODE, AZURE_CONV, MOONCAKE, load_azure, load_mooncake

trace, objectives, router, n_inst, n = sys.argv[1:6]
n_inst, n = int(n_inst), int(n)
if trace == "mooncake":
    w = load_mooncake(MOONCAKE, limit=n, max_input_tokens=16384)
else:
    w = load_azure(AZURE_CODE if trace == "azure_code" else AZURE_CONV, limit=n,
                   max_input_tokens=16384)
w = at_load(w, 0.7 * capacity_rps(w) * n_inst / 8)
ttft, tpot = (float(x) for x in objectives.split("/")) if objectives != "none" else (None, None)
w = [r.model_copy(update={"ttft_slo_ms": ttft, "tpot_slo_ms": tpot}) for r in w]
members = [
    MemberSpec(SimInstanceConfig(seed=i, num_kv_blocks=8192), max_concurrent_requests=SLOTS)
    for i in range(n_inst)
]
res = run_replay(w, InProcessFleet(members), CoordinatorConfig(router=router))
chosen = "|".join(str(o.instance_id) for o in res.outcomes)
h = hashlib.sha256()
for o in res.outcomes:
    h.update(json.dumps(dataclasses.asdict(o), sort_keys=True).encode())
h.update(json.dumps(res.engine, sort_keys=True).encode())
print(json.dumps({
    "decisions_sha": hashlib.sha256(chosen.encode()).hexdigest()[:16],
    "outcomes_sha": h.hexdigest()[:16],
    "completed": sum(o.state == "completed" for o in res.outcomes),
    "instances_used": len({o.instance_id for o in res.outcomes}),
}))
"""


def run_case(checkout: Path, case: tuple[str, str | None, str, int], n: int) -> dict[str, Any]:
    trace, objectives, router, n_inst = case
    args = [trace, objectives or "none", router, str(n_inst), str(n)]
    return run_in_checkout(checkout, _CHILD, args, " ".join(args))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, type=Path, help="checkout A (the baseline)")
    ap.add_argument("--b", required=True, type=Path, help="checkout B")
    ap.add_argument("--n", type=int, default=1500, help="requests per case (the trace's first)")
    ap.add_argument("--name", default="decision_equivalence")
    a = ap.parse_args()
    a.a, a.b = a.a.resolve(), a.b.resolve()
    commits = {"a": _commit(a.a), "b": _commit(a.b)}
    rows: list[dict[str, Any]] = []
    for case in CASES:
        ra, rb = run_case(a.a, case, a.n), run_case(a.b, case, a.n)
        trace, objectives, router, n_inst = case
        row = {
            "trace": trace,
            "objectives": objectives,
            "router": router,
            "instances": n_inst,
            "requests": a.n,
            "a": ra,
            "b": rb,
            "same_decisions": ra["decisions_sha"] == rb["decisions_sha"],
            "same_outcomes": ra["outcomes_sha"] == rb["outcomes_sha"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_results(a.name, {"commits": commits, "rows": rows}, _markdown(commits, rows))
    if not all(r["same_decisions"] and r["same_outcomes"] for r in rows):
        raise SystemExit("the checkouts differ (see the table)")


def _markdown(commits: dict[str, str], rows: list[dict[str, Any]]) -> str:
    md = [
        "# Same decisions, same replay: two checkouts on several traces",
        "",
        __doc__.split("usage:")[0].strip(),
        "",
        f"A = `{commits['a']}`, B = `{commits['b']}`.",
        "",
        "| trace | objectives (TTFT/TPOT ms) | router | instances | requests | completed "
        "| instances used | decisions hash A / B | outcomes hash A / B | same |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        ra, rb = r["a"], r["b"]
        same = "yes" if r["same_decisions"] and r["same_outcomes"] else "**NO**"
        md.append(
            f"| {r['trace']} | {r['objectives'] or 'none'} | {r['router']} | {r['instances']} "
            f"| {r['requests']} | {rb['completed']} | {rb['instances_used']} "
            f"| {ra['decisions_sha']} / {rb['decisions_sha']} "
            f"| {ra['outcomes_sha']} / {rb['outcomes_sha']} | {same} |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
