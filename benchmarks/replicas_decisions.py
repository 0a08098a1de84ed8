"""Why replicas route worse than one process: each routing decision of a `bench_replicas`
cell, scored against the fleet's true bookings (a diagnosis, issue 16).

For every decision of `prefix_aware` it records, per candidate, what the deciding replica saw
(its own bookings plus its peers' as last heard) and the truth at that moment (every
replica's own bookings summed), then scores the chosen instance by its *regret*: its
predicted TTFT from the true bookings minus the best candidate's (the load model's formula,
the request's own tokens). Decisions are grouped by what was wrong in the replica's view:
`unheard` (a peer's booking had not arrived: some candidate's true in-flight count is above
the seen one), `stale` (only seen prefill tokens differ, e.g. a peer's prefill that has
since finished), `clean` (the view was exact). One process's regret is not zero: its tie
rule gives up some TTFT on purpose (`routing.tie_tolerance`).

usage: python -m benchmarks.replicas_decisions [--trace azure_conv] [--load 0.5] [--seed 0]
       [--variants one_process,3_shared] [--n 1000] [--seeds 3]
Prints one line per variant, and the regret per group.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import benchmarks.bench_replicas as bench
from sage_cp_plugin import load_model
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.routing import prefix_aware
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.virtual.runner import CoordinatorConfig


def record_decisions(
    trace: str, load: float, seed: int, seeds: int, n: int, variant: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one cell with every `prefix_aware` decision recorded: (the cell's row, decisions)."""
    managers: list[ControlPlaneManager] = []
    log: list[dict[str, Any]] = []
    build, select = CoordinatorConfig.build, prefix_aware.PrefixAwareRouter.select

    def building(self: Any, fleet: Any, n_requests: int) -> ControlPlaneManager:
        m = build(self, fleet, n_requests)
        managers.append(m)
        return m

    def selecting(
        self: Any, item: Any, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        chosen = select(self, item, candidates, fleet)
        now = fleet.now
        rows = {}
        for c in candidates:
            truth = [m.fleet.states[c.instance_id] for m in managers]
            rows[c.instance_id] = {
                "seen_in_flight": c.in_flight + c.peer_in_flight,
                "true_in_flight": sum(s.in_flight for s in truth),
                "seen_prefill": load_model.own_prefill_ahead(c, now) + c.peer_prefill_tokens,
                "true_prefill": sum(load_model.own_prefill_ahead(s, now) for s in truth),
                "s_per_token": load_model.prefill_s_per_token(c),
                "step": load_model.decode_step_s(c),
                "chunk": load_model.chunk_tokens(c),
            }
        log.append({"tokens": item.input_tokens, "rows": rows,
                    "chose": chosen.instance_id if chosen else None})  # fmt: skip
        return chosen

    CoordinatorConfig.build = building  # type: ignore[method-assign]
    prefix_aware.PrefixAwareRouter.select = selecting  # type: ignore[method-assign]
    try:
        row = bench.run_cell(trace, load, seed, seeds, n, "prefix_aware", variant)
    finally:
        CoordinatorConfig.build = build  # type: ignore[method-assign]
        prefix_aware.PrefixAwareRouter.select = select  # type: ignore[method-assign]
    return row, log


def regrets(log: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each decision's regret (ms, see the module), grouped by what its view got wrong."""
    out: dict[str, list[float]] = {"all": [], "unheard": [], "stale": [], "clean": []}
    for d in log:
        if d["chose"] is None:
            continue

        def ttft(r: dict[str, Any], tokens: int = d["tokens"]) -> float:
            t = r["true_prefill"] + tokens
            return float(t * r["s_per_token"] + math.ceil(t / r["chunk"]) * r["step"])

        times = {iid: ttft(r) for iid, r in d["rows"].items()}
        regret = 1e3 * (times[d["chose"]] - min(times.values()))
        rows = d["rows"].values()
        if any(r["seen_in_flight"] < r["true_in_flight"] for r in rows):
            group = "unheard"
        elif any(abs(r["seen_prefill"] - r["true_prefill"]) > 1 for r in rows):
            group = "stale"
        else:
            group = "clean"
        out["all"].append(regret)
        out[group].append(regret)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trace", default="azure_conv")
    ap.add_argument("--load", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="windows of the trace (as the bench)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--variants", default="one_process,3_shared")
    args = ap.parse_args()
    for variant in args.variants.split(","):
        row, log = record_decisions(args.trace, args.load, args.seed, args.seeds, args.n, variant)
        print(f"{variant}: P90 TTFT {row['ttft_p90']:.2f} ms, {len(log)} decisions")
        for group, xs in regrets(log).items():
            if xs:
                a = np.array(xs)
                print(f"  {group:8s} {len(a):5d} decisions, regret mean {a.mean():.2f} ms, "
                      f"p99 {np.percentile(a, 99):.2f} ms, over 5 ms {(a > 5).sum()}")  # fmt: skip


if __name__ == "__main__":
    main()
