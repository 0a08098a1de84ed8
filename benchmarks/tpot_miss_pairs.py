"""Which requests miss their TPOT objective under one router and not under another, and what
ran beside them: the same matrix window replayed under both (same requests, same arrival
times), paired request by request.

For the steady-state requests (the goodput's interval), prints how the requests move between
met / TTFT-only / TPOT-only / both misses, and for those that miss only TPOT under B while
meeting both under A (and the reverse): their output and prompt lengths, their TTFT and TPOT
under each router, and the prefill that ran on their instance while they decoded (requests on
the same instance whose dispatch-to-first-token interval overlaps the request's decode: how
many, and their prompt tokens).

Run: ``python -m benchmarks.tpot_miss_pairs azure_code 0.7 --seed 1 --a round_robin
--b prefix_aware:ttft``  (router[:score]).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

from benchmarks import bench_matrix as bm
from benchmarks.matrix_one_cell import sustainable_rps
from sage_cp_plugin.virtual.compare import BASELINE
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RequestOutcome, run_replay
from sage_cp_plugin.virtual.steady import steady_interval


def _replay(trace: str, spec: str, seed: int, rate: float) -> list[RequestOutcome]:
    router, _, score = spec.partition(":")
    setup = bm._SETUPS[trace]
    config = CoordinatorConfig(
        router=router,
        router_options={"score": score} if score else {},
        policy=BASELINE.policy,
        **setup.coordinator,
    )
    fleet = InProcessFleet(setup.members(seed), direct=setup.direct)
    return run_replay(setup.workload(seed, rate), fleet, config, prompt_seed=seed).outcomes


def _kind(o: RequestOutcome) -> str:
    if o.state != "completed" or o.ttft_ms is None:
        return "failed"
    ttft = o.ttft_ms > bm.SLO_TTFT_MS
    tpot = o.tpot_ms is not None and o.tpot_ms > bm.SLO_TPOT_MS
    return ("met", "ttft_only", "tpot_only", "both")[int(ttft) + 2 * int(tpot)]


def _beside(outs: list[RequestOutcome], o: RequestOutcome) -> tuple[int, int]:
    """Requests (and their prompt tokens) prefilling on o's instance while o decoded."""
    assert o.ttft_ms is not None and o.finished_s is not None
    start, end = o.arrival_s * 1000 + o.ttft_ms, o.finished_s * 1000
    n = tokens = 0
    for x in outs:
        if x is o or x.instance_id != o.instance_id or x.ttft_ms is None:
            continue
        ps, pe = x.arrival_s * 1000 + (x.queue_ms or 0.0), x.arrival_s * 1000 + x.ttft_ms
        if pe > start and ps < end:
            n += 1
            tokens += x.input_tokens
    return n, tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("trace", choices=bm.TRACES)
    p.add_argument("load", type=float)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--a", default="round_robin")
    p.add_argument("--b", default="prefix_aware:ttft")
    p.add_argument("--cache", default=str(bm.RESULTS / "matrix.cells.jsonl"))
    a = p.parse_args(argv)
    rate = a.load * sustainable_rps(Path(a.cache), a.trace, 2000, 3)
    bm._SETUPS[a.trace], _ = bm.make_setup(a.trace, 2000, 3, {}, {})
    outs_a = _replay(a.trace, a.a, a.seed, rate)
    outs_b = _replay(a.trace, a.b, a.seed, rate)
    lo, hi = steady_interval(outs_a)
    pairs = [(x, y) for x, y in zip(outs_a, outs_b, strict=True) if lo <= x.arrival_s <= hi]
    moves = collections.Counter((_kind(x), _kind(y)) for x, y in pairs)
    print(f"{a.trace} {a.load:.0%} seed {a.seed}: A={a.a} B={a.b}, {len(pairs)} steady requests")
    for (ka, kb), n in moves.most_common():
        print(f"  A {ka:9s} -> B {kb:9s} {n}")
    for label, (one, other), (o1, o2) in (
        ("B misses TPOT only, A meets both", (1, 0), (outs_b, outs_a)),
        ("A misses TPOT only, B meets both", (0, 1), (outs_a, outs_b)),
    ):
        sel = [(p_[one], p_[other]) for p_ in pairs if _kind(p_[one]) == "tpot_only"]
        sel = [(m, ok) for m, ok in sel if _kind(ok) == "met"]
        print(f"{label}: {len(sel)}")
        if not sel:
            continue

        def pct(xs: list[float]) -> str:
            return "/".join(f"{v:.0f}" for v in np.percentile(xs, [10, 50, 90]))

        print(f"  output tokens P10/P50/P90 {pct([m.completion_tokens for m, _ in sel])}")
        print(f"  prompt tokens P10/P50/P90 {pct([m.input_tokens for m, _ in sel])}")
        print(
            f"  TPOT P50 ms: missing {np.median([m.tpot_ms for m, _ in sel]):.0f}, "
            f"meeting {np.median([ok.tpot_ms for _, ok in sel]):.0f}"
        )
        miss = [_beside(o1, m) for m, _ in sel]
        met = [_beside(o2, ok) for _, ok in sel]
        print(
            f"  prefilling beside their decode (mean requests, tokens): missing "
            f"{np.mean([x[0] for x in miss]):.1f}, {np.mean([x[1] for x in miss]):.0f}; "
            f"meeting {np.mean([x[0] for x in met]):.1f}, {np.mean([x[1] for x in met]):.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
