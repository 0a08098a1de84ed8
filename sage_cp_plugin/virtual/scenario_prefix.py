"""Prefix-heavy multi-tenant traffic (Mooncake) and a no-sharing control (Azure conversation).

Prefix workload: the Mooncake FAST'25 synthetic trace (kvcache-ai/Mooncake, Apache-2.0), its
`hash_ids` turned into shared 512-token prompt blocks, prompts clipped to 16k tokens. A window
of the trace's last 800 requests (each seed a different one), where sharing within the window
is high (an ideal single cache would hit ~2/3 of prompt tokens); tenants are the trace's root
blocks (16 tenants: `user_id` = first hash id mod 16). Replayed at 60 requests/s, above what
cache-blind routing sustains (~1.2k output tokens/s) and below what prefix-aware routing does. Control: the Azure 2023 conversation trace (no shared prefixes)
at 80 requests/s (about half the fleet's capacity). Fleet: 8 x Llama-3.1-8B/H100 (simulated),
up to 256 requests in flight each, so the router, not a concurrency cap, decides placement.
Routers: round_robin (baseline), load_balanced, locality, prefix_aware (defaults), prefix_aware
with `balance_abs_threshold=1000` (`prefix_aware_t`: never falls back to least-loaded because
of an in-flight imbalance; the load term still spreads hot prefixes), kv_aware (scraped
/metrics every 0.5 s).
"""

from __future__ import annotations

import math
from typing import Any

from sage_cp_plugin.scrape import ScrapeConfig
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.bench import Scenario, Variant, goal, mean_of, ratio
from sage_cp_plugin.virtual.fleet import MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig
from sage_cp_plugin.workloads import AZURE_CONV, load_azure, load_mooncake, time_scaled

ROUTERS = ("round_robin", "load_balanced", "locality", "prefix_aware", "prefix_aware_t", "kv_aware")
TUNED = {"balance_abs_threshold": 1000}
PREFIX_RPS = 60.0
CONTROL_RPS = 80.0
TRACE_END = 3993  # rows in the Mooncake trace


# Smoke runs (CI): 2 instances admitting 8 each, so that 40 requests form a queue.
SMOKE_FLEET = (2, 8)


def build(seed: int, smoke: bool) -> list[Variant]:
    n = 40 if smoke else 300
    start = TRACE_END - n - 100 * seed
    routers = ("round_robin", "load_balanced", "prefix_aware") if smoke else ROUTERS
    instances, slots = SMOKE_FLEET if smoke else (8, 64)
    members = [
        MemberSpec(
            SimInstanceConfig(seed=seed * 10 + i, num_kv_blocks=8192), max_concurrent_requests=slots
        )
        for i in range(instances)
    ]
    moon = load_mooncake(limit=n, start=start, max_input_tokens=16384)
    moon = [r.model_copy(update={"tenant": f"tenant-{r.prefix_blocks[0] % 16}"}) for r in moon]
    moon = time_scaled(moon, PREFIX_RPS)
    conv = time_scaled(
        load_azure(AZURE_CONV, limit=n, start=seed * n, max_input_tokens=8000), CONTROL_RPS
    )
    out = []
    for group, w in (("prefix (mooncake)", moon), ("no sharing (azure conv)", conv)):
        for r in routers:
            cfg = CoordinatorConfig(
                router=r.removesuffix("_t"),
                router_options=TUNED if r.endswith("_t") else {},
                extra={"scrape": ScrapeConfig(interval_s=0.5, stale_after_s=2.0)},
            )
            out.append(Variant(r, cfg, members, w, group))
    return out


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    p, c = "prefix (mooncake)", "no sharing (azure conv)"
    rows = []
    for pa in ("prefix_aware", "prefix_aware_t"):
        if math.isnan(mean_of(result, p, pa, "all.completed")):
            continue  # variant not in this run (smoke)
        tput = ratio(
            mean_of(result, p, pa, "all.output_tokens_per_s"),
            mean_of(result, p, "round_robin", "all.output_tokens_per_s"),
        )
        ttft = ratio(
            mean_of(result, p, pa, "all.ttft_ms_p90"),
            mean_of(result, p, "round_robin", "all.ttft_ms_p90"),
        )
        ctrl = ratio(
            mean_of(result, c, pa, "all.output_tokens_per_s"),
            mean_of(result, c, "load_balanced", "all.output_tokens_per_s"),
        )
        ctrl_ttft = ratio(
            mean_of(result, c, pa, "all.ttft_ms_p90"),
            mean_of(result, c, "load_balanced", "all.ttft_ms_p90"),
        )
        rows += [
            goal(
                f"{pa} / round_robin output tokens/s (prefix-heavy)", tput, ">= 2x", tput >= 2, "x"
            ),
            goal(f"{pa} / round_robin P90 TTFT (prefix-heavy)", ttft, "<= 0.1x", ttft <= 0.1, "x"),
            goal(
                f"{pa} / load_balanced output tokens/s (control)",
                ctrl,
                "0.95-1.05x",
                0.95 <= ctrl <= 1.05,
                "x",
            ),
            goal(
                f"{pa} / load_balanced P90 TTFT (control)",
                ctrl_ttft,
                "0.95-1.05x",
                0.95 <= ctrl_ttft <= 1.05,
                "x",
            ),
        ]
    return rows


SCENARIO = Scenario(
    name="prefix_multi_tenant",
    description=__doc__ or "",
    build=build,
    baseline="round_robin",
    columns=(
        "all.ttft_ms_p50",
        "all.ttft_ms_p90",
        "all.output_tokens_per_s",
        "prefix_hit_rate",
        "all.e2e_ms_p90",
        "preemptions",
    ),
    goals=goals,
    plots=("all.ttft_ms_p90", "all.output_tokens_per_s", "prefix_hit_rate"),
)
