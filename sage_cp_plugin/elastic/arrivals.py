"""The arrival rate the autoscaler sizes on: a Poisson estimate over a window, with confidence
bounds whose width shrinks with the number of arrivals seen.

Why bounds and not a rate: arrivals in an interval are (close to) Poisson, so a count of ``n``
has a standard deviation of ``sqrt(n)``. At 20 arrivals per 30 s interval a measured rate is
+-22 % by noise alone; sizing on it, and scaling down only to the highest need of a window,
ratchets the fleet up (session 6: steady Mooncake, 1 replica static vs 2.3x its GPU-hours).
Over a window of ``T`` seconds with ``N`` arrivals the rate is ``N / T`` and the score
(Wilson) interval for a Poisson mean gives its bounds,
``(N + z^2/2 +- z sqrt(N + z^2/4)) / T``: exact enough from the first arrival on, never
negative, and relatively ``~ z / sqrt(N)`` wide, so a window with more arrivals decides
with more certainty. Nothing in it is a constant fitted to a trace: ``z`` is the normal
quantile of the configured confidence.

Two more things the window needs, both tested for before they are used:
- **A trend**: a rate rising over the window is forecast to the horizon (cold start +
  interval) by the lower confidence bound of the least-squares slope of the interval rates
  (``b - z se``, Poisson variance ``rate / dt`` per interval): zero until the rise is
  significant, then growing continuously. A fall is never forecast: the window's mean lags a
  fall, which only keeps a replica a little longer, while a forecast fall would cut one that
  takes a cold start to come back.
- **A step** (a burst): the window's mean lags a jump, so the highest *lower* bound over the
  window's recent suffixes (the last interval, the last two, ...) is kept too: a jump shows
  in the last interval's count long before it moves the window's mean, and a lower bound
  only exceeds the true rate by the test's error rate.
Pure functions; ``elastic/autoscaler.py`` decides with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

Interval = tuple[float, float, float]  # (end time s, arrivals, length s)


def z_of(confidence: float) -> float:
    """The one-sided normal quantile of ``confidence`` (0.95 -> 1.645)."""
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def poisson_bounds(n: float, t: float, z: float) -> tuple[float, float]:
    """Score-interval bounds of a Poisson rate from ``n`` arrivals in ``t`` seconds."""
    if t <= 0:
        raise ValueError(f"the window must be longer than 0 s, got {t}")
    n = max(n, 0.0)
    half = z * math.sqrt(n + z * z / 4)
    return max(0.0, (n + z * z / 2 - half) / t), (n + z * z / 2 + half) / t


@dataclass(frozen=True)
class RateEstimate:
    """The window's rate, forecast to the horizon, with its bounds (requests/s)."""

    arrivals: int  # seen in the window
    span_s: float  # the window's length actually covered
    point: float  # forecast at the horizon (the window mean plus a significant trend)
    lower: float
    upper: float
    slope: float  # requests/s per s used in the forecast (0: no significant rise)
    recent_lower: float  # highest lower bound over the window's recent suffixes

    def precise(self, tolerance: float) -> bool:
        """Whether the level is known within ``tolerance`` of itself (the bound's half-width
        relative to the point); a window with no arrival is precise only about being idle."""
        if self.arrivals == 0:
            return True
        return (self.upper - self.point) <= tolerance * self.point


def estimate(intervals: Sequence[Interval], now: float, horizon_s: float, z: float) -> RateEstimate:
    """The rate at ``now + horizon_s`` from the intervals' counts (oldest first)."""
    cells = [(end, max(0.0, n), dt) for end, n, dt in intervals if dt > 0]
    if not cells:
        return RateEstimate(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    total = sum(c[1] for c in cells)
    span = sum(c[2] for c in cells)
    mean = total / span
    lo, hi = poisson_bounds(total, span, z)
    slope = 0.0
    if len(cells) >= 3 and total > 0:
        w = [c[2] for c in cells]  # Var(n/dt) = rate/dt: weight each interval by dt
        mid = [c[0] - c[2] / 2 for c in cells]
        centre = sum(wi * m for wi, m in zip(w, mid, strict=True)) / span
        sxx = sum(wi * (m - centre) ** 2 for wi, m in zip(w, mid, strict=True))
        if sxx > 0:
            b = sum(wi * (m - centre) * (c[1] / c[2] - mean)
                    for wi, m, c in zip(w, mid, cells, strict=True)) / sxx  # fmt: skip
            # The rise the data surely shows: the slope's lower confidence bound. It is 0
            # until the rise is significant and grows continuously from there, so a slope
            # that noise barely pushes past significance adds nothing (extrapolated over
            # the horizon, the full slope would add a jump of z standard errors).
            slope = max(0.0, b - z * math.sqrt(mean / sxx))
            mean += slope * (now + horizon_s - centre)
    upper = mean + (hi - total / span)
    lower = max(0.0, mean - (total / span - lo))
    recent, n, t = 0.0, 0.0, 0.0
    for _, k, dt in reversed(cells):
        n, t = n + k, t + dt
        recent = max(recent, poisson_bounds(n, t, z)[0])
    return RateEstimate(round(total), span, mean, lower, upper, slope, recent)
