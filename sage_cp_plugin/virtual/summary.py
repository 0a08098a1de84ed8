"""Statistics of one replay, with the conventions of docs/architecture.md §9.

TTFT includes queueing; TPOT = (E2E - TTFT) / (output tokens - 1); SLO attainment is the share
of requests carrying an SLO that met all of theirs, shed or failed ones counting as misses;
goodput is SLO-meeting requests (requests without SLOs count when completed) per second of the
run's makespan (first arrival to last finish). Percentiles are over completed requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sage_cp_plugin.virtual.runner import RequestOutcome, RunResult

_PCTS = (50, 90, 99)


def _pcts(values: Sequence[float | None], name: str) -> dict[str, float]:
    arr = np.array([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {f"{name}_p{p}": float("nan") for p in _PCTS} | {f"{name}_mean": float("nan")}
    out = {f"{name}_p{p}": float(np.percentile(arr, p)) for p in _PCTS}
    out[f"{name}_mean"] = float(arr.mean())
    return out


def summarize_outcomes(outcomes: Iterable[RequestOutcome]) -> dict[str, float]:
    """Throughput, latency percentiles, attainment and goodput of a set of requests."""
    os = list(outcomes)
    done = [o for o in os if o.state == "completed"]
    n = len(os)
    out: dict[str, float] = {
        "requests": float(n),
        "completed": float(len(done)),
        "lost": float(n - len(done)),
    }
    if not os:
        return out
    start = min(o.arrival_s for o in os)
    end = max((o.finished_s for o in done if o.finished_s is not None), default=start)
    span = max(end - start, 1e-9)
    tokens = sum(o.completion_tokens for o in done)
    with_slo = [o for o in os if o.has_slo]
    met = sum(1 for o in with_slo if o.slo_met)
    good = met + sum(1 for o in done if not o.has_slo)
    out |= {
        "makespan_s": span,
        "throughput_rps": len(done) / span,
        "output_tokens_per_s": tokens / span,
        "goodput_rps": good / span,
        "slo_attainment": met / len(with_slo) if with_slo else float("nan"),
    }
    out |= _pcts([o.ttft_ms for o in done], "ttft_ms")
    out |= _pcts([o.tpot_ms for o in done], "tpot_ms")
    out |= _pcts([o.e2e_ms for o in done], "e2e_ms")
    out |= _pcts([o.queue_ms for o in done], "queue_ms")
    return out


def paired_by_path(
    outcomes: Sequence[RequestOutcome], baseline: Sequence[RequestOutcome]
) -> dict[str, dict[str, float]]:
    """Per PD path ("split", "whole"), the same requests in a baseline replay of the same
    workload (paired by index, those completed in both): their mean TPOT here and there,
    and the gain 1 - here / there. What "TPOT gain where it disaggregates" means: not the
    split requests against every request of the baseline (whose mix differs), but the very
    requests that were split against themselves served by the baseline."""
    by_path: dict[str, list[tuple[float, float]]] = {}
    for o in outcomes:
        if o.path is None or o.tpot_ms is None or o.index >= len(baseline):
            continue
        b = baseline[o.index].tpot_ms
        if b is not None:
            by_path.setdefault(o.path, []).append((o.tpot_ms, b))
    out: dict[str, dict[str, float]] = {}
    for path, pairs in sorted(by_path.items()):
        here = float(np.mean([a for a, _ in pairs]))
        there = float(np.mean([b for _, b in pairs]))
        out[path] = {
            "requests": float(len(pairs)),
            "tpot_ms_mean": here,
            "baseline_tpot_ms_mean": there,
            "tpot_gain": 1.0 - here / there if there > 0 else float("nan"),
        }
    return out


def summarize(result: RunResult, group_by: str | None = "slo_class") -> dict[str, Any]:
    """Overall statistics, per-group statistics, engine and decision-cost figures of a run."""
    out: dict[str, Any] = {"all": summarize_outcomes(result.outcomes)}
    if group_by is not None:
        groups: dict[str, list[RequestOutcome]] = {}
        for o in result.outcomes:
            key = getattr(o, group_by)
            if key is not None:
                groups.setdefault(str(key), []).append(o)
        out["groups"] = {k: summarize_outcomes(v) for k, v in sorted(groups.items())}
    paths: dict[str, list[RequestOutcome]] = {}
    for o in result.outcomes:
        if o.path is not None:
            paths.setdefault(o.path, []).append(o)
    if paths:  # PD fleets: split (two-step) vs whole requests
        out["paths"] = {k: summarize_outcomes(v) for k, v in sorted(paths.items())}
        out["split_share"] = len(paths.get("split", [])) / len(result.outcomes)
    eng = result.engine
    queries = eng.get("prefix_cache_queries", 0)
    # Prompt tokens served from cache / prompt tokens, once per request (the simulator counts a
    # preempted request's re-admission apart, as vLLM does).
    out["prefix_hit_rate"] = eng.get("prefix_cache_hits", 0) / queries if queries else 0.0
    out["cached_prompt_fraction"] = out["prefix_hit_rate"]
    computed, prompt = eng.get("prompt_tokens_computed", 0), eng.get("prompt_tokens", 0)
    out["prompt_tokens_computed_share"] = computed / prompt if prompt else 0.0
    out["preemptions"] = eng.get("preemptions", 0)
    out["wall_s"] = result.wall_s
    out["virtual_s"] = result.virtual_s
    out["decision"] = result.decision
    failures: dict[str, int] = {}
    for o in result.outcomes:
        if o.state != "completed":
            failures[o.error_type or o.state] = failures.get(o.error_type or o.state, 0) + 1
    out["failures"] = failures
    out["retried_requests"] = sum(1 for o in result.outcomes if o.attempts > 1)
    return out
