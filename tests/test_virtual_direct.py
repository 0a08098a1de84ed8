"""The direct replay transport (`virtual/direct.py`) against the ASGI one: the same replay
makes the same decisions with the same timings.

Tolerance, stated: identical instance, state, attempts and token counts per request. TTFT,
TPOT, E2E and queue time: equal within 1e-6 ms for at least 90 % of requests, and no request
off by more than one engine step (`MAX_STEP_MS`, the longest step this sample can take). Why
not all equal: the ASGI path is not reproducible to the step even against itself -- two ASGI
replays of this sample in one process differ on up to ~7 % of requests by one step (~9.5 ms;
a request arriving at the same virtual instant as a step boundary joins that step or the
next), while two direct replays agree exactly. The sample covers streaming and
non-streaming upstreams, three routers, an instance crash with failover, and injected 500s
(retries).
"""

from __future__ import annotations

import numpy as np
import pytest

from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.sim.config import FaultConfig
from sage_cp_plugin.virtual import CoordinatorConfig, InProcessFleet, MemberSpec, run_replay
from sage_cp_plugin.virtual.runner import RequestOutcome
from sage_cp_plugin.workloads import synthetic

TOL_MS = 1e-6
# One engine step at most: b0 + b1 x a full 2048-token prompt + b2 x 8 sequences (H100 preset).
MAX_STEP_MS = 5.75 + 17.25e-3 * 2048 + 6.0e-3 * 8


def _members() -> list[MemberSpec]:
    return [
        MemberSpec(
            SimInstanceConfig(
                seed=i, faults=FaultConfig(error_rate=0.05) if i == 1 else FaultConfig()
            ),
            max_concurrent_requests=8,
        )
        for i in range(4)
    ]


def _kill_two(fleet: object, _manager: object) -> None:
    fleet.kill(2)  # type: ignore[attr-defined]


def _run(direct: bool, router: str, streaming: bool) -> list[RequestOutcome]:
    work = synthetic(
        np.random.default_rng(3), 300, rate=60.0, input_tokens=(32, 2048), output_tokens=(4, 64)
    )
    cfg = CoordinatorConfig(router=router, upstream_streaming=streaming)
    fleet = InProcessFleet(_members(), direct=direct)
    return run_replay(work, fleet, cfg, events=[(2.0, _kill_two)]).outcomes


@pytest.mark.parametrize(
    ("router", "streaming"),
    [("load_balanced", False), ("prefix_aware", True), ("kv_aware", False)],
)
def test_direct_and_asgi_transports_agree(router: str, streaming: bool) -> None:
    asgi = _run(False, router, streaming)
    direct = _run(True, router, streaming)
    assert sum(o.state == "completed" for o in asgi) > 250
    assert sum(o.attempts > 1 for o in asgi) > 0  # retries and failovers were exercised
    assert any(o.instance_id == "sim-2" for o in asgi)  # the killed instance had work
    differing = 0
    for a, d in zip(asgi, direct, strict=True):
        assert (a.instance_id, a.state, a.attempts, a.completion_tokens, a.error_type) == (
            d.instance_id,
            d.state,
            d.attempts,
            d.completion_tokens,
            d.error_type,
        ), a.index
        off = 0.0
        for f in ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms"):
            x, y = getattr(a, f), getattr(d, f)
            assert (x is None) == (y is None), (a.index, f)
            if x is not None:
                off = max(off, abs(x - y))
        assert off <= MAX_STEP_MS, (a.index, off)
        differing += off > TOL_MS
    assert differing <= 0.10 * len(asgi)
