"""What "best" means: one score per objective, higher is better.

- ``latency``: lowest mean end-to-end latency (TTFT + (output-1) x TPOT) at the target rate
  (idle fleet when no rate is given); layouts unstable at the target rate rank last.
- ``throughput``: highest sustainable output tokens/s.
- ``goodput``: highest rate at which >= 90 % of requests meet every SLO (DistServe's
  definition); needs at least one SLO.
- ``min_gpus``: fewest GPUs whose goodput (or sustainable rate, without SLOs) reaches the
  target rate; ties go to the higher goodput per GPU. Needs a target rate.
"""

from __future__ import annotations

from enum import StrEnum

from sage_cp_plugin.parallelism.errors import PlanningError
from sage_cp_plugin.parallelism.estimate import LayoutEstimate
from sage_cp_plugin.parallelism.workload import WorkloadSpec


class Objective(StrEnum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"
    GOODPUT = "goodput"
    MIN_GPUS = "min_gpus"


def parse_objective(value: str | Objective) -> Objective:
    try:
        return Objective(value)
    except ValueError:
        known = ", ".join(o.value for o in Objective)
        raise PlanningError(f"objective={value!r} is not one of: {known}") from None


def check_objective(objective: Objective, workload: WorkloadSpec) -> None:
    """Objectives that need targets the workload does not carry are bad input."""
    if objective is Objective.GOODPUT and not workload.has_slo:
        raise PlanningError(
            "objective='goodput' needs an SLO: give ttft_slo_ms and/or tpot_slo_ms "
            "(CLI: --ttft-ms / --tpot-ms)"
        )
    if objective is Objective.MIN_GPUS and workload.rate_rps is None:
        raise PlanningError(
            "objective='min_gpus' needs a target rate: give rate_rps (CLI: --rate) or a "
            "trace workload whose arrivals define one"
        )


def meets_target(est: LayoutEstimate, workload: WorkloadSpec) -> bool:
    """Sustains the target rate (within SLO when SLOs are set)."""
    if workload.rate_rps is None:
        return True
    return est.goodput_rps >= workload.rate_rps


def score(objective: Objective, est: LayoutEstimate, workload: WorkloadSpec) -> tuple[float, ...]:
    """Sort key, larger is better. Tuples break ties by goodput per GPU, then fewer GPUs."""
    tie = (est.goodput_rps_per_gpu, -float(est.gpus))
    if objective is Objective.LATENCY:
        primary = -est.e2e_ms_mean if est.stable else -float("inf")
        return (float(est.stable), primary, *tie)
    if objective is Objective.THROUGHPUT:
        return (est.throughput_tok_s, *tie)
    if objective is Objective.GOODPUT:
        return (est.goodput_rps, -est.e2e_ms_mean, -float(est.gpus))
    ok = meets_target(est, workload)
    return (float(ok), -float(est.gpus) if ok else est.goodput_rps, est.goodput_rps_per_gpu)
