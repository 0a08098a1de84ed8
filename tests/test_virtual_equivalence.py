"""The same scenario on the virtual clock (in-process) and in real time over loopback agrees.

What holds on any machine, however loaded, is asserted here: every request completes in both
runs, round_robin spreads them over the instances alike (its exact order can differ when a
loaded machine delays one real-time arrival past the next), and no request is faster in real time than on the virtual clock by more than two engine steps (real
time only adds work: sleep overshoot, HTTP, a busy machine; a request arriving mid-step may join
the next step in one run and the current one in the other, hence the step granularity). How
close the two are (agreement of load_balanced's decisions, the median TTFT/E2E difference)
depends on the machine's load: `benchmarks/virtual_equivalence.py` measures and reports it.
"""

from __future__ import annotations

import asyncio
from collections import Counter

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
    assert len(real) == len(workload) and all(x[2] > 0 for x in real)
    if router == "round_robin":
        virtual_counts = Counter(o.instance_id for o in virtual.outcomes)
        assert virtual_counts == Counter(x[0] for x in real)
        assert sorted(virtual_counts.values()) == [4, 5, 5]
    for k, name in ((1, "ttft_ms"), (2, "e2e_ms")):
        v = np.array([getattr(o, name) for o in virtual.outcomes])
        r = np.array([x[k] for x in real])
        assert np.all(r >= v - 2 * STEP_MS), (name, v, r)
