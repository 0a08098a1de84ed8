"""The same scenario on the virtual clock (in-process) and in real time over loopback agrees.

What the test pins does not depend on how busy the machine is: the same requests complete with
the same number of tokens, a timing-independent router spreads them alike, and no request
is served faster in real time than the virtual clock says (the simulated engine's steps are a
floor; real time can only add the event loop's overshoot and HTTP work, less one engine step for
a request that joins a step in one run and the next step in the other). How much slower real
time is, is a measurement of the machine, not a property of the code: the upper tolerance is
measured by `benchmarks/virtual_equivalence.py` and reported in docs/benchmarks.md.
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

    async def real_time() -> list[tuple[str | None, float, float, int]]:
        fleet = LoopbackFleet(_specs())
        await fleet.start()
        # First connections and first-use code paths cost real time the virtual run never pays.
        await replay(warmup, fleet, cfg, prompt_seed=7, close_fleet=False)
        res = await replay(workload, fleet, cfg, lead_in_s=0.5)
        assert all(o.state == "completed" for o in res.outcomes)
        return [
            (o.instance_id, o.ttft_ms or 0.0, o.e2e_ms or 0.0, o.completion_tokens)
            for o in res.outcomes
        ]

    real = asyncio.run(real_time())
    assert all(o.state == "completed" for o in virtual.outcomes)
    for o, r in zip(virtual.outcomes, real, strict=True):
        assert o.completion_tokens == r[3], (o.index, o.completion_tokens, r[3])
    if router == "round_robin":
        # Same spread over the instances; the exact order moved by one request once on a 2-core
        # machine at load average 18 (a delayed real-time arrival dispatched after the next).
        counts = Counter(o.instance_id for o in virtual.outcomes)
        assert counts == Counter(x[0] for x in real) and sorted(counts.values()) == [4, 5, 5]
    # Where both runs placed a request on the same instance, real time is never faster.
    placed_alike = [
        (o, r) for o, r in zip(virtual.outcomes, real, strict=True) if o.instance_id == r[0]
    ]
    assert placed_alike
    for k, name in ((1, "ttft_ms"), (2, "e2e_ms")):
        v = np.array([getattr(o, name) for o, _ in placed_alike])
        r = np.array([x[k] for _, x in placed_alike])
        assert np.all(r >= v - STEP_MS), (name, v, r)
