"""Measure how closely a virtual-clock replay matches the same replay in real time over loopback.

    python benchmarks/virtual_equivalence.py [--time-scale 4] [--requests 30]

Prints, per router, how many routing decisions agree and the distribution of per-request
TTFT/E2E differences (real - virtual). The CI test (tests/test_virtual_equivalence.py) asserts
a bound; this script reports the measured numbers for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual import (
    CoordinatorConfig,
    InProcessFleet,
    MemberSpec,
    replay,
    run_virtual,
)
from sage_cp_plugin.virtual.target import LoopbackFleet
from sage_cp_plugin.workloads import synthetic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-scale", type=float, default=4.0)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--rate", type=float, default=2.0)
    args = ap.parse_args()
    specs = [
        MemberSpec(SimInstanceConfig(seed=i, time_scale=args.time_scale), max_concurrent_requests=2)
        for i in range(3)
    ]
    w = synthetic(
        np.random.default_rng(1),
        args.requests,
        args.rate,
        input_tokens=(64, 1024),
        output_tokens=(8, 32),
    )
    warm = synthetic(np.random.default_rng(9), 6, 50.0, input_tokens=(16, 32), output_tokens=(2, 4))
    for router in ("round_robin", "load_balanced", "prefix_aware"):
        cfg = CoordinatorConfig(policy="fifo", router=router)
        v = run_virtual(replay(w, InProcessFleet(specs), cfg, lead_in_s=0.5))

        async def real(cfg: CoordinatorConfig = cfg):  # type: ignore[no-untyped-def]
            fleet = LoopbackFleet(specs)
            await fleet.start()
            await replay(warm, fleet, cfg, prompt_seed=7, close_fleet=False)
            return await replay(w, fleet, cfg, lead_in_s=0.5)

        r = asyncio.run(real())
        same = sum(
            a.instance_id == b.instance_id for a, b in zip(v.outcomes, r.outcomes, strict=True)
        )
        print(f"{router}: routing identical for {same}/{len(w)} requests")
        for k in ("ttft_ms", "e2e_ms"):
            a = np.array([getattr(o, k) for o in v.outcomes])
            b = np.array([getattr(o, k) for o in r.outcomes])
            d, rel = b - a, np.abs(b - a) / a
            print(
                f"  {k}: real-virtual median {np.median(d):+.1f} ms, p90 |diff| "
                f"{np.percentile(np.abs(d), 90):.1f} ms, max |diff| {np.abs(d).max():.1f} ms; "
                f"relative median {np.median(rel):.1%}, p90 {np.percentile(rel, 90):.1%}"
            )


if __name__ == "__main__":
    main()
