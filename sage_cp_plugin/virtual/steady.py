"""Steady-state statistics of one replay: the figures `sage-cp replay --json` reports.

Warm-up and drain are excluded by rule, not by eye: the steady-state requests are those
arriving in the middle 80 % of the window's arrival span (`[t0 + 10 %, t1 - 10 %]`).
- Latency percentiles (TTFT, TPOT, E2E, in ms) are over the completed steady-state requests.
- `output_tokens_per_s`: tokens generated inside that interval, by any request, divided by its
  length; a request's tokens are spread evenly between its first token and its finish (the
  engine streams them at its TPOT), so a burst that finishes after the interval does not count.
- `goodput_rps`: steady-state requests that completed and met every SLO they carry (requests
  without SLOs count when completed), per second of the interval (DistServe's rate x attainment).
- `slo_attainment`: share of steady-state requests with an SLO that met it (failures count as
  misses); None when no request carries one.
- `cached_prompt_fraction`: prompt tokens served from the engines' prefix caches / prompt
  tokens, each request counted once (its first admission; the simulator counts a preempted
  request's re-admission apart, as vLLM does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sage_cp_plugin.virtual.runner import RequestOutcome, RunResult

STEADY_TRIM = 0.10  # share of the arrival span dropped at each end (warm-up, drain)
PERCENTILES = (50, 90, 99)


def steady_interval(outcomes: Sequence[RequestOutcome]) -> tuple[float, float]:
    """The middle 80 % of the arrival span (a zero-length interval for a single instant)."""
    t = [o.arrival_s for o in outcomes]
    t0, t1 = min(t), max(t)
    trim = (t1 - t0) * STEADY_TRIM
    return t0 + trim, t1 - trim


def _pcts(values: Sequence[float | None]) -> dict[str, float | None]:
    arr = np.array([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}


def _tokens_inside(o: RequestOutcome, a: float, b: float) -> float:
    """Output tokens `o` generated in [a, b], its tokens spread evenly from first to last."""
    if o.state != "completed" or o.ttft_ms is None or o.finished_s is None:
        return 0.0
    first = o.arrival_s + o.ttft_ms / 1000.0
    last = o.finished_s
    n = o.completion_tokens
    if last <= first:  # a single token (or all at once): count it at its time
        return float(n) if a <= first <= b else 0.0
    overlap = max(0.0, min(b, last) - max(a, first))
    return n * overlap / (last - first)


def steady_stats(result: RunResult) -> dict[str, Any]:
    """The JSON figures of one run (see the module docstring)."""
    outs = result.outcomes
    done = [o for o in outs if o.state == "completed"]
    eng = result.engine
    queries = eng.get("prefix_cache_queries", 0)
    stats: dict[str, Any] = {
        "requests": len(outs),
        "completed": len(done),
        "failed": len(outs) - len(done),
        "cached_prompt_fraction": eng.get("prefix_cache_hits", 0) / queries if queries else 0.0,
    }
    if not outs:
        return stats
    a, b = steady_interval(outs)
    mid = [o for o in outs if a <= o.arrival_s <= b]
    mid_done = [o for o in mid if o.state == "completed"]
    span = b - a
    with_slo = [o for o in mid if o.has_slo]
    met = sum(1 for o in with_slo if o.slo_met)
    good = met + sum(1 for o in mid_done if not o.has_slo)
    tokens = sum(_tokens_inside(o, a, b) for o in done)
    stats |= {
        "steady_requests": len(mid),
        "steady_interval_s": [a, b],
        "ttft_ms": _pcts([o.ttft_ms for o in mid_done]),
        "tpot_ms": _pcts([o.tpot_ms for o in mid_done]),
        "e2e_ms": _pcts([o.e2e_ms for o in mid_done]),
        "queue_ms": _pcts([o.queue_ms for o in mid_done]),
        "output_tokens_per_s": tokens / span if span > 0 else None,
        "goodput_rps": good / span if span > 0 else None,
        "slo_attainment": met / len(with_slo) if with_slo else None,
        "preemptions": eng.get("preemptions", 0),
        "decision_us_mean": result.decision.get("us_per_decision"),
        "decision_us_p50": result.decision.get("plan_us_p50"),
    }
    return stats


def mean_stats(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Seed means of every number (nested dicts too); None where no run has a value."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for r in runs for k in r))
    for k in keys:
        vals = [r.get(k) for r in runs]
        if any(isinstance(v, dict) for v in vals):
            out[k] = mean_stats([v for v in vals if isinstance(v, dict)])
        elif all(isinstance(v, list) for v in vals if v is not None):
            continue  # per-run detail (intervals) has no meaningful mean
        else:
            nums = [
                float(v) for v in vals if isinstance(v, int | float) and not isinstance(v, bool)
            ]
            out[k] = float(np.mean(nums)) if nums else None
    return out


def pooled_p90(results: Sequence[RunResult], field: str) -> float | None:
    """P90 of `field` (ttft_ms / tpot_ms) over the completed steady-state requests of runs."""
    vals: list[float] = []
    for r in results:
        if not r.outcomes:
            continue
        a, b = steady_interval(r.outcomes)
        for o in r.outcomes:
            v = getattr(o, field)
            if a <= o.arrival_s <= b and o.state == "completed" and v is not None:
                vals.append(v)
    return float(np.percentile(vals, 90)) if vals else None


def saturated_throughput(outcomes: Sequence[RequestOutcome]) -> float | None:
    """Requests per second the fleet completes while it is saturated: from the first 10 % of
    completions (start-up excluded) to the last dispatch out of the coordinator's queue (until
    then every slot was busy and requests waited). None when no queue formed long enough:
    offer more requests than the fleet has slots, at a rate above what it serves."""
    done = [o for o in outcomes if o.state == "completed" and o.finished_s is not None]
    if len(done) < 20:
        return None
    last_dispatch = max(o.arrival_s + (o.queue_ms or 0.0) / 1000.0 for o in done)
    finished = sorted(o.finished_s for o in done if o.finished_s is not None)
    start = finished[len(finished) // 10]
    n = sum(1 for t in finished if start < t <= last_dispatch)
    if last_dispatch <= start or n < 10:
        return None
    return n / (last_dispatch - start)
