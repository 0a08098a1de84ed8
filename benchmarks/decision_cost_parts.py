"""Where a decision's thread-CPU goes inside a real replay, without a profiler.

cProfile hooks every call and inflates small functions most (`decision_cost_profile`: read
its shares only). Here only the decision (`planning.plan_head`) and five of its parts are
wrapped, each timed with `time.thread_time_ns`, and the figures are per decision that
dispatched a request: the fleet table's routable/free lists (`FleetTable.routable_and_free`,
including its `refresh` of changed rows), the load rows' refresh (`FleetTable.refresh_load`),
the flags' refresh (`FleetTable.refresh`, inside both), the prefix cache view
(`EventsOrApproximateView.cached_tokens`) and the pick (`predicted.pick_index`, including
its own `refresh_load`). The replay is `decision_cost_replay_ab`'s (Azure 2023 code trace at
70 % of the fleet's capacity, the whole coordinator on the virtual clock). The wrappers add
about a microsecond per wrapped call; `plan_cpu_us_p50` is the probe's own figure for the
same run. Also counts the rows `refresh_load` rereads per decision.

usage: python -m benchmarks.decision_cost_parts --instances 64 --router prefix_aware --n 1000
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

import sage_cp_plugin.dispatch as dispatch
import sage_cp_plugin.fleet_table as fleet_table
import sage_cp_plugin.kvevents.view as kv_view
import sage_cp_plugin.planning as planning
import sage_cp_plugin.routing.predicted as predicted
from benchmarks.decision_cost_replay import fleet, workload
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay

PARTS = ("routable_and_free", "refresh_load", "refresh", "cached_tokens", "pick_index")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--router", default="prefix_aware")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    clock = time.thread_time_ns
    spent: dict[str, int] = defaultdict(int)
    per_decision: dict[str, list[int]] = defaultdict(list)

    def timed(owner: Any, name: str, part: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            c = clock()
            out = inner(*a, **k)
            spent[part] += clock() - c
            return out

        setattr(owner, name, wrapper)

    timed(fleet_table.FleetTable, "routable_and_free", "routable_and_free")
    timed(fleet_table.FleetTable, "refresh", "refresh")
    timed(kv_view.EventsOrApproximateView, "cached_tokens", "cached_tokens")
    timed(predicted, "pick_index", "pick_index")
    reread = fleet_table.FleetTable.refresh_load

    def refresh_load(self: fleet_table.FleetTable) -> None:
        self.refresh()
        spent["rows_reread"] += len(self.load_dirty)
        c = clock()
        reread(self)
        spent["refresh_load"] += clock() - c

    fleet_table.FleetTable.refresh_load = refresh_load  # type: ignore[method-assign]
    plan = planning.plan_head

    def plan_head(*a: Any) -> Any:
        spent.clear()
        c = clock()
        action = plan(*a)
        total = clock() - c
        if isinstance(action, planning.Launch):
            per_decision["plan_head"].append(total)
            for part in (*PARTS, "rows_reread"):
                per_decision[part].append(spent.get(part, 0))
        return action

    dispatch.plan_head = plan_head  # type: ignore[assignment,attr-defined]
    w = workload(args.instances, args.n)
    res = run_replay(w, fleet(args.instances), CoordinatorConfig(router=args.router))
    print(f"{args.instances} instances, {args.router}, {len(per_decision['plan_head'])} decisions")
    for part in ("plan_head", *PARTS):
        us = np.array(per_decision[part], dtype=float) / 1e3
        print(
            f"  {part:18s} thread-CPU us per decision: p50 {np.percentile(us, 50):7.1f}, "
            f"mean {us.mean():7.1f}, p90 {np.percentile(us, 90):7.1f}"
        )
    rows = np.array(per_decision["rows_reread"], dtype=float)
    print(
        f"  rows reread by refresh_load per decision: mean {rows.mean():.2f}, max {rows.max():.0f}"
    )
    print(f"  probe plan_cpu_us_p50 (same run): {res.decision['plan_cpu_us_p50']:.1f}")


if __name__ == "__main__":
    main()
