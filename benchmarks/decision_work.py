"""Work per decision inside a real replay, counted, not timed: bytecode instructions and
Python function calls executed by `planning.plan_head`, per decision that dispatched.

Thread-CPU timings of a decision (`decision_cost_replay_ab`) move by 30-40 % between runs
minutes apart on a loaded machine, more than most single cuts change them. These counts do
not depend on the machine: the same code and trace give the same numbers, so a cut's effect
on the interpreter's work can be read from one run (what they do not see: cache misses, C
functions' own cost, allocation). The replay is `decision_cost_replay`'s (Azure 2023 code
trace at 70 % of the fleet's capacity, the whole coordinator on the virtual clock); the
tracer is on only inside `plan_head`, so the replay's decisions are the same as untraced
(the chosen instances' hash is printed, to compare with another checkout).

usage (any checkout that has `benchmarks/decision_cost_replay.py` with `fleet`/`workload`):
    PYTHONPATH=/path/to/checkout python benchmarks/decision_work.py --instances 64 \
        --routers prefix_aware,kv_aware,load_balanced,round_robin --n 1000
Prints one JSON line per router (`--top N`: also the N functions with the most opcodes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from types import FrameType
from typing import Any

import numpy as np

import sage_cp_plugin.dispatch as dispatch
import sage_cp_plugin.planning as planning
from benchmarks.decision_cost_replay import fleet, workload
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay


def count_router(n_inst: int, router: str, n: int, top: int = 0) -> dict[str, Any]:
    counts = {"op": 0, "call": 0}
    per_decision: dict[str, list[int]] = {"op": [], "call": []}
    by_function: dict[str, int] = {}  # opcodes per function, over dispatched decisions
    current: dict[str, int] = {}

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            counts["op"] += 1
            if top:
                code = frame.f_code
                key = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_qualname}"
                current[key] = current.get(key, 0) + 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            counts["call"] += 1
            frame.f_trace_opcodes = True
            return local
        return None

    plan = planning.plan_head

    def plan_head(*a: Any) -> Any:
        counts["op"] = counts["call"] = 0
        current.clear()
        sys.settrace(tracer)
        try:
            action = plan(*a)
        finally:
            sys.settrace(None)
        if isinstance(action, planning.Launch):
            per_decision["op"].append(counts["op"])
            per_decision["call"].append(counts["call"])
            for key, c in current.items():
                by_function[key] = by_function.get(key, 0) + c
        return action

    dispatch.plan_head = plan_head  # type: ignore[assignment,attr-defined]
    try:
        res = run_replay(workload(n_inst, n), fleet(n_inst), CoordinatorConfig(router=router))
    finally:
        dispatch.plan_head = plan  # type: ignore[attr-defined]
    ops = np.array(per_decision["op"], dtype=float)
    calls = np.array(per_decision["call"], dtype=float)
    chosen = "|".join(str(o.instance_id) for o in res.outcomes)
    heaviest = sorted(by_function.items(), key=lambda kv: -kv[1])[:top]
    return {
        "instances": n_inst,
        "router": router,
        "decisions": len(ops),
        "opcodes_p50": float(np.percentile(ops, 50)),
        "opcodes_mean": float(ops.mean()),
        "opcodes_p90": float(np.percentile(ops, 90)),
        "calls_p50": float(np.percentile(calls, 50)),
        "calls_mean": float(calls.mean()),
        "decisions_sha": hashlib.sha256(chosen.encode()).hexdigest()[:16],
        **(
            {"opcodes_mean_by_function": {k: round(v / len(ops), 1) for k, v in heaviest}}
            if top
            else {}
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--routers", default="prefix_aware,kv_aware,load_balanced,round_robin")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--top", type=int, default=0, help="also the N heaviest functions")
    args = ap.parse_args()
    if args.instances < 1 or args.n < 1:
        ap.error("--instances and --n must be at least 1")
    for router in args.routers.split(","):
        print(json.dumps(count_router(args.instances, router, args.n, args.top)), flush=True)


if __name__ == "__main__":
    main()
