"""Scale: 64 to 256 simulated instances, up to 100,000 requests, on the virtual clock.

Workload: prompt/output lengths of the Azure 2023 code trace (long prompts, short answers),
tiled to the request count, on Poisson arrivals at 8 requests/s per instance (about half of
a simulated Llama-3.1-8B/H100's capacity on it). Upstream non-streaming (one response per
request: the per-token SSE work would measure the simulator, not the coordinator).
Measured: wall time of the replay and the coordinator's dispatch cost per decision, by
pending-queue length. Routers: round_robin (baseline) and load_balanced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.bench import Scenario, Variant, goal, mean_of
from sage_cp_plugin.virtual.fleet import MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig
from sage_cp_plugin.workloads import AZURE_CODE, load_azure, poisson_arrivals, with_arrivals

RATE_PER_INSTANCE = 8.0
# (instances, requests) per group; smoke runs use the small one only.
SIZES = ((64, 25_000), (256, 100_000))
SMOKE_SIZES = ((8, 200),)


def build(seed: int, smoke: bool) -> list[Variant]:
    rng = np.random.default_rng(seed)
    trace = load_azure(AZURE_CODE, max_input_tokens=8000)
    out = []
    for instances, n in SMOKE_SIZES if smoke else SIZES:
        picks = rng.integers(0, len(trace), size=n)
        base = [trace[int(i)] for i in picks]
        w = with_arrivals(base, poisson_arrivals(rng, RATE_PER_INSTANCE * instances, n))
        members = [
            MemberSpec(SimInstanceConfig(seed=seed * 1000 + i), max_concurrent_requests=64)
            for i in range(instances)
        ]
        group = f"{instances} inst / {n} req"
        for r in ("round_robin", "load_balanced"):
            cfg = CoordinatorConfig(router=r, upstream_streaming=False, enable_monitoring=False)
            out.append(Variant(r, cfg, members, w, group))
    return out


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for g in dict.fromkeys(v["group"] for v in result["variants"]):
        if "100000 req" not in g:
            continue
        for r in ("round_robin", "load_balanced"):
            wall = mean_of(result, g, r, "wall_s")
            rows.append(goal(f"{g}, {r}: wall time", wall, "< 60 s", wall < 60, " s"))
    return rows


SCENARIO = Scenario(
    name="scale",
    description=__doc__ or "",
    build=build,
    baseline="round_robin",
    columns=(
        "wall_s",
        "virtual_s",
        "decision.us_per_decision",
        "all.completed",
        "all.e2e_ms_p50",
        "all.e2e_ms_p99",
    ),
    goals=goals,
    plots=("wall_s", "decision.us_per_decision", "all.e2e_ms_p99"),
)
