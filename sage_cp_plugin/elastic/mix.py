"""Confidence bounds of the request mix the autoscaler sizes on, as the rate has them.

Why: the mix (mean prompt, its cv^2 and the length quantiles) is estimated from the requests
that completed recently (the controller's last 1,024; fewer early on), and a sample's mean
carries sampling noise like an arrival count does. Taken as exact, that noise moves the
planner's count as a noisy rate would: a mix drifting up and then steady flapped its fleet
4 <-> 5 in most seeds of the drift test (tests/test_elastic_arrivals.py) while the rate,
bounded, did not move it.

What: the relative standard error of a mean of ``n`` values with squared coefficient of
variation ``cv2`` is ``sqrt(cv2 / n)`` (the central limit theorem); at one-sided confidence
``z`` the mean prompt lies within ``1 +- z sqrt(cv2 / n)`` of the estimate. The fleet is sized
(and cut) for the *upper* factor times the prompt lengths, and scaled up on the estimate once
the bound is within ``tolerance`` of it, on the lower factor before: the same dead band the
rate's bounds set (``autoscaler.up_trigger``). The lower factor is ``1 / upper`` (a
multiplicative bound: positive for any sample, and a mean of positive skewed lengths errs
further up than down).

Only prompt lengths are bounded: longer prompts mean more prefill work, longer prefill steps
inside other requests' decode steps and a longer own prefill, so their upper bound is the
pessimistic mix for both tails. Output lengths are not monotone in the miss (a longer
answer spreads the prefills it carries over more decode steps), so no one-sided bound of
them is pessimistic, and they are taken as estimated. Pure functions.
"""

from __future__ import annotations

import math


def prompt_factors(n: int, cv2: float, z: float, tolerance: float) -> tuple[float, float]:
    """``(trigger, upper)`` factors on the prompt lengths estimated from ``n`` requests; no
    sample (``n <= 0``) is taken as exact (1, 1): nothing is known of its noise."""
    if n <= 0:
        return 1.0, 1.0
    h = z * math.sqrt(max(cv2, 0.0) / n)
    upper = 1.0 + h
    return (1.0 if h <= tolerance else 1.0 / upper), upper
