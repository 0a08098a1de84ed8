"""The same scenario on the virtual clock (in-process) and in real time over loopback agrees.

Tolerance (measured on a loaded 2-core machine, see docs/benchmarks.md): routing decisions are
identical for timing-independent routers and at least 90 % identical for load_balanced; the
median per-request relative difference of TTFT and E2E is under 25 %; every request is within
two engine steps plus 50 %. Real time runs slower by the event loop's sleep overshoot and HTTP
work per step, and a request arriving mid-step may join the next step in one run and the
current one in the other, hence the one-step granularity of the bound.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

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

TIME_SCALE = 4.0
STEP_MS = 5.75 * TIME_SCALE


def _specs() -> list[MemberSpec]:
    return [
        MemberSpec(SimInstanceConfig(seed=i, time_scale=TIME_SCALE), max_concurrent_requests=2)
        for i in range(3)
    ]


@pytest.mark.parametrize("router", ["round_robin", "load_balanced"])
def test_virtual_and_loopback_agree(router: str) -> None:
    workload = synthetic(
        np.random.default_rng(1), 14, rate=2.0, input_tokens=(64, 1024), output_tokens=(8, 32)
    )
    warmup = synthetic(
        np.random.default_rng(9), 6, rate=50.0, input_tokens=(16, 32), output_tokens=(2, 4)
    )
    cfg = CoordinatorConfig(policy="fifo", router=router)
    virtual = run_virtual(replay(workload, InProcessFleet(_specs()), cfg, lead_in_s=0.5))

    async def real_time() -> list[tuple[str | None, float, float]]:
        fleet = LoopbackFleet(_specs())
        await fleet.start()
        # First connections and first-use code paths cost real time the virtual run never pays.
        await replay(warmup, fleet, cfg, prompt_seed=7, close_fleet=False)
        res = await replay(workload, fleet, cfg, lead_in_s=0.5)
        return [(o.instance_id, o.ttft_ms or 0.0, o.e2e_ms or 0.0) for o in res.outcomes]

    real = asyncio.run(real_time())
    assert all(o.state == "completed" for o in virtual.outcomes)
    same = sum(o.instance_id == r[0] for o, r in zip(virtual.outcomes, real, strict=True))
    if router == "round_robin":
        assert same == len(workload)
    else:
        assert same >= 0.9 * len(workload)
    for k, name in ((1, "ttft_ms"), (2, "e2e_ms")):
        v = np.array([getattr(o, name) for o in virtual.outcomes])
        r = np.array([x[k] for x in real])
        rel = np.abs(r - v) / v
        assert np.median(rel) < 0.25, (name, rel)
        assert np.all(np.abs(r - v) <= 2 * STEP_MS + 0.5 * v), (name, v, r)
