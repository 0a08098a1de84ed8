"""Decision cost of two versions of the decision path, paired per decision in one replay.

On a loaded 2-core machine the thread-CPU p50 of `plan_head` moves by 30-50 % between runs
minutes apart (`decision_cost_replay_ab`: round_robin, whose path did not change, measured
0.76x-1.54x in one session), more than a cut changes it. Here both versions decide every
request of one replay (`decision_cost_replay`'s: Azure 2023 code trace at 70 % of the fleet's
capacity, the whole coordinator on the virtual clock): this checkout's functions and, swapped
in for the other call, checkout A's versions of the functions below (loaded from its files).
Per decision the first call is timed in thread CPU (the second finds the fleet table's rows
already reread and its caches warm, so it is not timed); which version goes first alternates
by decision, so both see the same states, the same machine at the same moment and the same
cold caches. Both must return the same action (the same instance): a difference stops the run.

Swapped: `routing.pruned_pick.pick_index` (as `predicted` calls it), `FleetTable.refresh_load`,
`FleetTable.routable_and_free`, `Dispatcher.routable_and_free`, the functions session 12
changed; A must have them with the same signatures.

usage: python -m benchmarks.decision_cost_paired --a /path/to/main --instances 64,256 --n 3000 \
           [--objectives 1000/100]
Writes benchmarks/results/decision_cost_paired.{json,md} (`--name`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.common import write_results
from benchmarks.decision_cost_replay import fleet, workload
from benchmarks.decision_cost_replay_ab import _commit
from sage_cp_plugin import dispatch, fleet_table
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.planning import Launch
from sage_cp_plugin.routing import predicted
from sage_cp_plugin.virtual import runner
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay


def _load(checkout: Path, rel: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, checkout / "sage_cp_plugin" / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _swaps(checkout: Path) -> list[tuple[Any, str, Any, Any]]:
    """(owner, attribute, A's value, this checkout's value)."""
    pp = _load(checkout, "routing/pruned_pick.py", "a_pruned_pick")
    ft = _load(checkout, "fleet_table.py", "a_fleet_table")
    # A's table functions build this checkout's candidate lists (the router tests the class).
    ft.with_rows, ft.Candidates = fleet_table.with_rows, fleet_table.Candidates
    dp = _load(checkout, "dispatch.py", "a_dispatch")
    pairs = [
        (predicted, "pick_index", pp.pick_index),
        (fleet_table.FleetTable, "refresh_load", ft.FleetTable.refresh_load),
        (fleet_table.FleetTable, "routable_and_free", ft.FleetTable.routable_and_free),
        (dispatch.Dispatcher, "routable_and_free", dp.Dispatcher.routable_and_free),
    ]
    return [(owner, attr, a_value, getattr(owner, attr)) for owner, attr, a_value in pairs]


def run_paired(
    checkout: Path, n_inst: int, n: int, objectives: str | None = None
) -> dict[str, Any]:
    swaps = _swaps(checkout)

    def use(a_side: bool) -> None:
        for owner, attr, a_value, b_value in swaps:
            setattr(owner, attr, a_value if a_side else b_value)

    cpu_ns: dict[bool, list[int]] = {True: [], False: []}  # A's, B's (first calls)
    turn = [0]
    probe = runner.DecisionCostProbe

    class PairedProbe(probe):  # type: ignore[misc, valid-type]
        def __init__(self, manager: ControlPlaneManager) -> None:
            plan = manager.dispatcher.plan_head

            def paired(*args: Any) -> Any:
                turn[0] += 1
                a_first = bool(turn[0] & 1)
                use(a_first)
                c = time.thread_time_ns()
                first = plan(*args)
                dt = time.thread_time_ns() - c
                use(not a_first)
                second = plan(*args)
                if type(first) is not type(second) or (
                    isinstance(first, Launch) and first.state is not second.state
                ):
                    raise SystemExit(f"the versions decided differently: {first} / {second}")
                if isinstance(first, Launch):
                    cpu_ns[a_first].append(dt)
                return first

            manager.dispatcher.plan_head = paired  # type: ignore[method-assign]
            super().__init__(manager)

    runner.DecisionCostProbe = PairedProbe  # type: ignore[misc]
    try:
        ttft, tpot = (float(x) for x in objectives.split("/")) if objectives else (None, None)
        work = workload(n_inst, n, ttft, tpot)
        run_replay(work, fleet(n_inst), CoordinatorConfig(router="prefix_aware"))
    finally:
        runner.DecisionCostProbe = probe  # type: ignore[misc]
        use(False)
    a_us = statistics.median(cpu_ns[True]) / 1e3
    b_us = statistics.median(cpu_ns[False]) / 1e3
    return {
        "instances": n_inst,
        "router": "prefix_aware",
        "objectives": objectives,
        "requests": n,
        "a_decisions": len(cpu_ns[True]),
        "b_decisions": len(cpu_ns[False]),
        "a_plan_cpu_us_p50": a_us,
        "b_plan_cpu_us_p50": b_us,
        "ratio": a_us / b_us,
        "loadavg_1m": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, type=Path, help="checkout A (the baseline)")
    ap.add_argument("--instances", default="64,256")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--name", default="decision_cost_paired")
    ap.add_argument("--objectives", default=None, help="TTFT_MS/TPOT_MS of every request")
    a = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    commits = {"a": _commit(a.a.resolve()), "b": _commit(here)}
    rows = []
    for n_inst in (int(x) for x in a.instances.split(",")):
        rows.append(run_paired(a.a.resolve(), n_inst, a.n, a.objectives))
        print(json.dumps(rows[-1]), flush=True)
        write_results(a.name, {"commits": commits, "rows": rows}, _markdown(commits, rows))


def _markdown(commits: dict[str, str], rows: list[dict[str, Any]]) -> str:
    md = [
        "# Decision cost, two versions paired per decision in one replay (issue 10)",
        "",
        __doc__.split("usage:")[0].strip(),
        "",
        f"A = `{commits['a']}`, B (this checkout) = `{commits['b']}`.",
        "",
        "| instances | router | objectives | decisions timed (A, B) | A plan p50 us CPU "
        "| B plan p50 us CPU | A/B | load avg 1m |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['instances']} | {r['router']} | {r.get('objectives') or 'none'} "
            f"| {r['a_decisions']}, {r['b_decisions']} "
            f"| {r['a_plan_cpu_us_p50']:.1f} | {r['b_plan_cpu_us_p50']:.1f} "
            f"| {r['ratio']:.3f}x | {r['loadavg_1m']:.1f} |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
