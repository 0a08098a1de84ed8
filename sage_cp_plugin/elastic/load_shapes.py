"""Load shapes for the autoscaling evaluation: request-rate profiles over time (a compressed
day, bursts, a steady rate) and the workload they give a bundled trace.

Arrivals are a non-homogeneous Poisson process thinned from the shape's peak; lengths come
from the trace. The shapes are rules (a cosine day, evenly spaced bursts), never a window
picked from a trace, so every variant of the evaluation sees the same, stated traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sage_cp_plugin.workloads.format import WorkloadRecord
from sage_cp_plugin.workloads.traces import load_trace


@dataclass(frozen=True)
class Shape:
    """A request-rate profile: ``rate(t)`` in requests/s over ``duration_s``."""

    name: str
    duration_s: float
    rate: Callable[[float], float]
    peak: float
    mean: float
    # Lengths drawn at random from the whole trace (a stationary mix) instead of in trace
    # order: a steady load is steady in its mix too. In trace order Mooncake's mean prompt
    # drifts 2,100 -> 2,970 tokens over an hour, a change of load the scaler rightly follows.
    stationary_mix: bool = False


def daily(mean: float, duration_s: float, swing: float = 0.6) -> Shape:
    """One compressed day: a trough at the start and end, the peak in the middle."""

    def rate(t: float) -> float:
        return mean * (1 - swing * math.cos(2 * math.pi * t / duration_s))

    return Shape("daily", duration_s, rate, mean * (1 + swing), mean)


def bursts(base: float, duration_s: float, factor: float = 2.5, n: int = 2,
           width_s: float = 180.0) -> Shape:  # fmt: skip
    """Flat load with ``n`` bursts of ``factor`` x, evenly spaced (by rule, not by hand)."""
    starts = [duration_s * (j + 1) / (n + 1) - width_s / 2 for j in range(n)]

    def rate(t: float) -> float:
        return base * (factor if any(s <= t < s + width_s for s in starts) else 1.0)

    mean = base * (1 + (factor - 1) * n * width_s / duration_s)
    return Shape("bursts", duration_s, rate, base * factor, mean)


def steady(rate: float, duration_s: float) -> Shape:
    """A constant rate: what the autoscaler does when nothing changes but Poisson noise."""
    return Shape("steady", duration_s, lambda t: rate, rate, rate, stationary_mix=True)


def workload(shape: Shape, trace: str, *, ttft_slo_ms: float, tpot_slo_ms: float, seed: int = 0,
             max_input_tokens: int = 4000) -> list[WorkloadRecord]:  # fmt: skip
    """Arrivals of a non-homogeneous Poisson process with ``shape`` (thinning); lengths taken
    in order from the bundled ``trace`` (for a ``stationary_mix`` shape: drawn uniformly, with
    replacement, from the whole trace); every request carries the SLOs."""
    rng = np.random.default_rng(seed)
    times: list[float] = []
    t, top = 0.0, shape.peak
    while True:
        t += float(rng.exponential(1.0 / top))
        if t >= shape.duration_s:
            break
        if rng.random() * top <= shape.rate(t):
            times.append(t)
    lengths = load_trace(trace, max_input_tokens=max_input_tokens)
    if shape.stationary_mix:
        picks = rng.integers(0, len(lengths), size=len(times))
        lengths = [lengths[int(k)] for k in picks]
    return [
        lengths[i % len(lengths)].model_copy(update={
            "arrival_s": at, "ttft_slo_ms": ttft_slo_ms, "tpot_slo_ms": tpot_slo_ms,
            "request_id": f"r{i}"})
        for i, at in enumerate(times)
    ]  # fmt: skip
