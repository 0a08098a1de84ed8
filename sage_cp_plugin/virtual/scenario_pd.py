"""PD separation: the same four GPUs as prefill/decode pools or as general instances.

Workload: the Azure 2023 code trace (long prompts, short answers) and conversation trace
(medium prompts, long answers) mixed half and half, arrival order kept, time-scaled to a load
ladder. Variants on 4 x Llama-3.1-8B/H100 (simulated):
- `general` (baseline): 4 general instances, load_balanced;
- `pd_pools`: 2 prefill + 2 decode instances, phase routing (long prompts to the prefill pool,
  short ones to the decode pool; each request still runs whole on one instance);
- `pd_disagg`: 2 prefill + 2 decode, vLLM's two-step disaggregated protocol (prefill with
  `max_tokens: 1` on one instance, KV transfer, decode on another) for prompts over 512 tokens;
- `pd_disagg_2k`: the same, splitting only prompts over 2048 tokens (shorter ones run whole on
  a decode instance).
Goodput counts requests meeting TTFT 1 s and TPOT 100 ms (the standard class).
"""

from __future__ import annotations

from typing import Any

from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.types import PDSeparationConfig
from sage_cp_plugin.virtual.bench import Scenario, Variant, goal, mean_of, ratio
from sage_cp_plugin.virtual.fleet import MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig
from sage_cp_plugin.workloads import AZURE_CODE, AZURE_CONV, WorkloadRecord, load_azure, time_scaled

RATES = (30.0, 55.0, 70.0)  # requests/s offered; general saturates at ~74 (measured)
SLO = {"ttft_slo_ms": 1000.0, "tpot_slo_ms": 100.0}


def _workload(seed: int, n: int, rate: float) -> list[WorkloadRecord]:
    # Each seed replays a different window of the traces.
    code = load_azure(AZURE_CODE, limit=n // 2, start=seed * n, max_input_tokens=8000)
    conv = load_azure(AZURE_CONV, limit=n // 2, start=seed * n, max_input_tokens=8000)
    merged = sorted(code + conv, key=lambda r: r.arrival_s)
    return [r.model_copy(update=SLO) for r in time_scaled(merged, rate)]


def _members(roles: list[str], seed: int) -> list[MemberSpec]:
    return [
        MemberSpec(SimInstanceConfig(role=role, seed=seed * 10 + i), max_concurrent_requests=64)
        for i, role in enumerate(roles)
    ]


def build(seed: int, smoke: bool) -> list[Variant]:
    n = 40 if smoke else 800
    rates = RATES[1:2] if smoke else RATES
    out = []
    for rate in rates:
        w = _workload(seed, n, rate)
        group = f"{rate:g} rps"
        pools = ["prefill", "prefill", "decode", "decode"]
        out += [
            Variant(
                "general",
                CoordinatorConfig(router="load_balanced"),
                _members(["general"] * 4, seed),
                w,
                group,
            ),
            Variant(
                "pd_pools",
                CoordinatorConfig(
                    router="load_balanced",
                    enable_pd_separation=True,
                    pd_config=PDSeparationConfig(
                        routing_policy="threshold", prefilling_threshold_input_tokens=1500
                    ),
                ),
                _members(pools, seed),
                w,
                group,
            ),
            Variant(
                "pd_disagg",
                CoordinatorConfig(
                    router="load_balanced",
                    enable_pd_separation=True,
                    pd_config=PDSeparationConfig(
                        disaggregated=True,
                        disaggregation_trigger="threshold",
                        prefilling_threshold_input_tokens=512,
                    ),
                ),
                _members(pools, seed),
                w,
                group,
            ),
        ]
        out.append(_disagg("pd_disagg_2k", 2048, _members(pools, seed), w, group))
    return out


def _disagg(
    label: str, threshold: int, members: list[MemberSpec], w: list[WorkloadRecord], group: str
) -> Variant:
    pd = PDSeparationConfig(
        disaggregated=True,
        disaggregation_trigger="threshold",
        prefilling_threshold_input_tokens=threshold,
    )
    cfg = CoordinatorConfig(router="load_balanced", enable_pd_separation=True, pd_config=pd)
    return Variant(label, cfg, members, w, group)


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for g in dict.fromkeys(v["group"] for v in result["variants"]):
        for pd in ("pd_pools", "pd_disagg", "pd_disagg_2k"):
            thr = ratio(
                mean_of(result, g, pd, "all.goodput_rps"),
                mean_of(result, g, "general", "all.goodput_rps"),
            )
            lat = ratio(
                mean_of(result, g, pd, "all.e2e_ms_p90"),
                mean_of(result, g, "general", "all.e2e_ms_p90"),
            )
            rows.append(
                goal(f"{g}: {pd} goodput vs general (+50 %)", thr, ">= 1.5x", thr >= 1.5, "x")
            )
            rows.append(
                goal(f"{g}: {pd} P90 E2E vs general (-50 %)", lat, "<= 0.5x", lat <= 0.5, "x")
            )
    return rows


SCENARIO = Scenario(
    name="pd_separation",
    description=__doc__ or "",
    build=build,
    baseline="general",
    columns=(
        "all.throughput_rps",
        "all.goodput_rps",
        "all.ttft_ms_p50",
        "all.ttft_ms_p99",
        "all.tpot_ms_p50",
        "all.tpot_ms_p99",
        "all.e2e_ms_p50",
        "all.e2e_ms_p99",
    ),
    goals=goals,
    plots=("all.goodput_rps", "all.ttft_ms_p99", "all.tpot_ms_p99", "all.e2e_ms_p90"),
)
