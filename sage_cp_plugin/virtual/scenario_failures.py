"""Heterogeneous fleet with a failure: instances of different speeds, the fastest dies mid-run.

Fleet (simulated Llama-3.1-8B on H100): 2 x TP1, 1 x TP2, 1 x TP4 (derived presets), each
admitting requests in proportion to its speed, with `speed_hint` set from the preset. At 40 %
of the arrival span the TP4 instance crashes (connections reset, new ones refused) and stays
down. Workload: Azure 2023 conversation trace on Poisson arrivals. Health probes every 1 s.
Routers: round_robin (baseline, speed-blind), load_balanced, kv_aware. Lost requests (failed
after retries) must be 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sage_cp_plugin.health import HealthConfig
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.scrape import ScrapeConfig
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.bench import Scenario, Variant, goal, mean_of
from sage_cp_plugin.virtual.fleet import MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig
from sage_cp_plugin.virtual.target import ReplayTarget
from sage_cp_plugin.workloads import AZURE_CONV, load_azure, poisson_arrivals, with_arrivals

ROUTERS = ("round_robin", "load_balanced", "kv_aware")
RATE = 40.0
# (preset, speed relative to TP1 from the preset's prefill coefficient, concurrency cap)
TIERS = (
    ("llama-3.1-8b-h100-tp1", 1.0, 32),
    ("llama-3.1-8b-h100-tp1", 1.0, 32),
    ("llama-3.1-8b-h100-tp2", 1.8, 58),
    ("llama-3.1-8b-h100-tp4", 3.3, 106),
)
VICTIM = 3


def _kill_victim(fleet: ReplayTarget, manager: ControlPlaneManager) -> None:
    fleet.kill(VICTIM)


def build(seed: int, smoke: bool) -> list[Variant]:
    n = 60 if smoke else 600
    routers = ("round_robin", "load_balanced") if smoke else ROUTERS
    rng = np.random.default_rng(seed)
    base = load_azure(AZURE_CONV, limit=n, start=seed * n, max_input_tokens=8000)
    w = with_arrivals(base, poisson_arrivals(rng, RATE, n))
    kill_at = 0.4 * w[-1].arrival_s
    members = [
        MemberSpec(
            SimInstanceConfig(preset=preset, seed=seed * 10 + i),
            max_concurrent_requests=cap,
            extra={"speed_hint": speed},
        )
        for i, (preset, speed, cap) in enumerate(TIERS)
    ]
    out = []
    for r in routers:
        cfg = CoordinatorConfig(
            router=r,
            health=HealthConfig(interval_s=1.0, timeout_s=0.5, cooldown_s=5.0),
            extra={"scrape": ScrapeConfig(interval_s=0.5, stale_after_s=2.0)},
        )
        out.append(
            Variant(
                r,
                cfg,
                members,
                w,
                "",
                events=[(kill_at, _kill_victim)],
                info={"kill_at_s": kill_at},
            )
        )
    return out


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    base = mean_of(result, "", "round_robin", "all.ttft_ms_p99")
    for r in dict.fromkeys(v["label"] for v in result["variants"]):
        lost = mean_of(result, "", r, "all.lost")
        rows.append(goal(f"{r}: lost requests", lost, "0", lost == 0))
        if r != "round_robin":
            p99 = mean_of(result, "", r, "all.ttft_ms_p99")
            rows.append(goal(f"{r}: P99 TTFT vs round_robin", p99 / base, "< 1x", p99 < base, "x"))
    return rows


SCENARIO = Scenario(
    name="heterogeneous_failures",
    description=__doc__ or "",
    build=build,
    baseline="round_robin",
    columns=(
        "all.lost",
        "retried_requests",
        "all.ttft_ms_p50",
        "all.ttft_ms_p99",
        "all.e2e_ms_p99",
        "all.throughput_rps",
    ),
    goals=goals,
    plots=("all.ttft_ms_p99", "all.e2e_ms_p99", "all.lost", "retried_requests"),
)
