"""The mean-latency corrections of the model, moved only as far as the observation shows.

Why: the autoscaler scales the model's work per request by observed / predicted mean TPOT
(and tightens the TTFT target by the same ratio for TTFT), as Dynamo's planner does. Each
interval's observed mean comes from the few dozen requests that finished in it, and request
latencies are heavy-tailed: on steady Mooncake one request that missed TPOT raised an
interval's mean TPOT from 12.8 to 18.1 ms, the smoothed correction from 0.82 to 0.91, and the
planner's count from 3 to 6 replicas (the TPOT tail is steep in the work per step). The
highest count of the scale-down window bounds a cut, so such a jump every few minutes held
the fleet at 5 for the whole half hour (benchmarks/results/autoscaling_s11.md). The rate
and the prompt mix were already bounded by their sample sizes (``arrivals.py``, ``mix.py``);
the correction was taken as exact.

What: the observed mean of ``n`` latencies with standard error ``se`` (their standard
deviation over ``sqrt(n)``: the central limit theorem) lies within ``mean +- z se`` at
one-sided confidence ``z``. Divided by the prediction that bounds the ratio. The smoothed
correction moves towards the ratio's bound nearest to it, and not at all when it lies
within the bounds: one outlier widens the bounds as much as it moves the mean, so noise
alone does not move the model, while a consistent error (many requests, small spread)
moves it as before. Without a standard error the ratio is taken as exact (the behaviour
before). Pure functions.
"""

from __future__ import annotations

import math


def corrected(old: float, observed: float | None, predicted: float, *, se: float | None,
              z: float, smoothing: float, floor: float, ceiling: float) -> float:  # fmt: skip
    """The correction after one observation: ``old`` moved by ``smoothing`` towards the
    ratio ``observed / predicted`` clipped to ``[floor, ceiling]``, or only to the nearest
    bound of ``(observed -+ z se) / predicted`` when ``se`` is given; unchanged without an
    observation or a usable prediction."""
    if observed is None or not math.isfinite(predicted) or predicted <= 0:
        return old
    half = z * se if se is not None and math.isfinite(se) and se > 0 else 0.0
    lo, hi = (observed - half) / predicted, (observed + half) / predicted
    target = min(max(old, lo), hi)
    target = min(max(target, floor), ceiling)
    return (1 - smoothing) * old + smoothing * target
