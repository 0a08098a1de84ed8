"""cProfile of the pure decision (`planning.plan_head`) inside a real replay.

The replay of `benchmarks.decision_cost_replay_ab` (Azure 2023 code trace at 70 % of the
fleet's capacity, the whole coordinator on the virtual clock), run once under cProfile; prints
the callees of the decision's hot functions so the cost per decision can be split by part.
Profiler overhead inflates every figure; read the shares, not the absolute times.

usage: python -m benchmarks.decision_cost_profile --instances 64 --router prefix_aware --n 400
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

from benchmarks.decision_cost_replay import fleet, workload
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay

HOT = ("plan_head", "select_instance", "pick_lowest_ttft", "pick_index", "routable_and_free")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--router", default="prefix_aware")
    ap.add_argument("--n", type=int, default=400)
    args = ap.parse_args()
    w = workload(args.instances, args.n)
    prof = cProfile.Profile()
    prof.enable()
    res = run_replay(w, fleet(args.instances), CoordinatorConfig(router=args.router))
    prof.disable()
    print({k: res.decision[k] for k in ("plan_decisions", "plan_cpu_us_p50", "plan_cpu_us_p99")})
    stats = pstats.Stats(prof)
    for name in HOT:
        stats.print_callees(name)


if __name__ == "__main__":
    main()
