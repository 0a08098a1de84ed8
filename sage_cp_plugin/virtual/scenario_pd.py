"""PD separation: the same four GPUs as a general pool, or as prefill + decode instances
with disaggregation decided per request.

Workloads: every bundled trace with its own arrival times — the Azure 2023 conversation
trace (medium prompts, long answers), the Azure 2023 code trace (long prompts, short answers,
bursty) and the Mooncake synthetic trace (long prompts sharing prefixes); 400 requests per
window, windows evenly spaced over each whole file (window = seed mod 3), prompts clipped to
8000 tokens (the same rule for every trace). Load: 50/70/90/110 % of the general pool's
capacity on each window, measured at run time (`measured_capacity_rps`: the window offered
at once to the general pool, completions/s while it is saturated), the trace's arrivals
time-scaled to that rate.
Every request carries TTFT 1 s and TPOT 100 ms (goodput counts those meeting both).
Variants on 4 x Llama-3.1-8B/H100 (simulated), 64 slots each, the coordinator's adaptive
concurrency limit on for every variant:
- `general` (baseline): 4 general instances, load_balanced;
- `pd_predicted`: 2 prefill + 2 decode instances; each request is split (vLLM's two-step
  protocol: prefill with `max_tokens: 1`, KV transfer, decode elsewhere) only when the
  split beats serving it whole (`split_decision.py`), otherwise it runs whole
  (`routing_policy="none"`) where the load model predicts it meets its TTFT/TPOT objectives
  (else where it would miss them by the least, waiting in the queue when that is an
  instance held by its prefill gate: `split_decision.whole_targets`), kept off a decode
  instance whose decodes its prefill would stall only while another instance takes it
  within its objectives at an extra wait smaller than that stall summed over the decodes
  (`split_decision.diverts`).
"TPOT gain where split" (`paired.split.tpot_gain`) pairs each request `pd_predicted` split
with the same request in `general` (same window, same seed): 1 - mean TPOT split / mean TPOT
of those requests in general, per seed, then the mean over seeds.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.types import PDSeparationConfig
from sage_cp_plugin.virtual.bench import Scenario, Variant, goal, mean_of, ratio
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.virtual.scenario_slo import SATURATING_RPS, _trace_rows, window_start
from sage_cp_plugin.virtual.steady import saturated_throughput
from sage_cp_plugin.workloads import (
    AZURE_CODE,
    AZURE_CONV,
    MOONCAKE,
    WorkloadRecord,
    load_trace,
    time_scaled,
)

TRACES = (AZURE_CONV, AZURE_CODE, MOONCAKE)
TRACE_LABEL = {AZURE_CONV: "conv", AZURE_CODE: "code", MOONCAKE: "mooncake"}
LOADS = (0.5, 0.7, 0.9, 1.1)  # fractions of the general pool's measured capacity
SLO = {"ttft_slo_ms": 1000.0, "tpot_slo_ms": 100.0}
SLOTS = 64
LIMIT = {"adaptive_concurrency": True}  # the same for every variant
GENERAL = ["general"] * 4
# Per window; more than the fleet's 4 x 64 slots, or no queue forms when its capacity is
# measured (200 was tried: the conversation window fit in the slots).
REQUESTS = 400
PD_POOLS = ["prefill", "prefill", "decode", "decode"]


def _workload(seed: int, n: int, rate: float, trace: str) -> list[WorkloadRecord]:
    start = window_start(seed, n, _trace_rows(trace))
    base = load_trace(trace, limit=n, start=start, max_input_tokens=8000)
    return [r.model_copy(update=SLO) for r in time_scaled(base, rate)]


SMOKE_SLOTS = 4  # smoke runs (CI): few requests, so few slots for a queue to form


def _members(roles: list[str], seed: int, slots: int = SLOTS) -> list[MemberSpec]:
    return [
        MemberSpec(SimInstanceConfig(role=role, seed=seed * 10 + i), max_concurrent_requests=slots)
        for i, role in enumerate(roles)
    ]


def _general() -> CoordinatorConfig:
    return CoordinatorConfig(router="load_balanced", extra=LIMIT)


@cache
def measured_capacity_rps(trace: str, seed: int, n: int, slots: int = SLOTS) -> float:
    """Requests/s the general pool completes on this window while saturated."""
    w = _workload(seed, n, SATURATING_RPS, trace)
    fleet = InProcessFleet(_members(GENERAL, seed, slots))
    res = run_replay(w, fleet, _general(), prompt_seed=seed)
    rate = saturated_throughput(res.outcomes)
    if rate is None:
        raise RuntimeError(f"pd_separation: no queue formed measuring {trace} window {seed}")
    return rate


def build(seed: int, smoke: bool) -> list[Variant]:
    n = 40 if smoke else REQUESTS
    loads = (0.9,) if smoke else LOADS
    traces = (AZURE_CODE,) if smoke else TRACES
    slots = SMOKE_SLOTS if smoke else SLOTS
    out = []
    for trace in traces:
        capacity = measured_capacity_rps(trace, seed, n, slots)
        for load in loads:
            out += cell_variants(trace, load, seed, capacity, n, slots)
    return out


def cell_variants(
    trace: str, load: float, seed: int, capacity: float, n: int = REQUESTS, slots: int = SLOTS
) -> list[Variant]:
    """The two variants of one cell (trace x load x seed), on the same workload."""
    w = _workload(seed, n, load * capacity, trace)
    group = f"{TRACE_LABEL[trace]} {load:.0%}"
    predicted = PDSeparationConfig(
        routing_policy="none", disaggregated=True, disaggregation_trigger="predicted"
    )
    cfg = CoordinatorConfig(
        router="load_balanced", enable_pd_separation=True, pd_config=predicted, extra=LIMIT
    )
    return [
        Variant("general", _general(), _members(GENERAL, seed, slots), w, group),
        Variant("pd_predicted", cfg, _members(PD_POOLS, seed, slots), w, group),
    ]


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for g in dict.fromkeys(v["group"] for v in result["variants"]):
        good = ratio(
            mean_of(result, g, "pd_predicted", "all.goodput_rps"),
            mean_of(result, g, "general", "all.goodput_rps"),
        )
        rows.append(
            goal(f"{g}: pd_predicted goodput vs general", good, ">= 0.95x", good >= 0.95, "x")
        )
        # The split requests against themselves in `general` (paired by request, per seed).
        gain = mean_of(result, g, "pd_predicted", "paired.split.tpot_gain")
        rows.append(
            goal(
                f"{g}: pd_predicted TPOT gain of the split requests (vs the same in general)",
                gain * 100,
                ">= 30 %",
                gain >= 0.30,
                " %",
            )
        )
    return rows


SCENARIO = Scenario(
    name="pd_separation",
    description=__doc__ or "",
    build=build,
    baseline="general",
    columns=(
        "all.goodput_rps",
        "all.throughput_rps",
        "split_share",
        "all.ttft_ms_p50",
        "all.ttft_ms_p90",
        "all.tpot_ms_mean",
        "paths.split.tpot_ms_mean",
        "paired.split.baseline_tpot_ms_mean",
        "paired.split.tpot_gain",
        "all.tpot_ms_p90",
        "all.e2e_ms_p90",
    ),
    goals=goals,
    plots=(
        "all.goodput_rps",
        "paired.split.tpot_gain",
        "paths.split.tpot_ms_mean",
        "all.ttft_ms_p90",
    ),
)
