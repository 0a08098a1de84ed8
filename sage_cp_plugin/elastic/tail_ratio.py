"""Observed over expected SLO misses: the TPOT tail's correction, measured, with bounds.

Why: the TPOT tail model (``tpot.py``) treats each replica's arrivals as an independent
Poisson share of the fleet's and every prompt as prefilled in full. A load-aware router sends
the next request to a replica that is *not* busy prefilling (so few prompts land in a short
answer's few decode steps), and a prefix cache prefills only a prompt's uncached part.
Measured on steady Mooncake (``benchmarks/autoscaling_tail_check.py``, 1.78 req/s, 600 s):
the model predicts 6.2 / 2.4 / 1.5 % of requests missing TPOT on 1 / 2 / 3 static replicas,
the simulated replicas missed 3.4 / 0.28 / 0 % (17-23 % of prompt tokens were cache hits);
2-token answers, about 18 % by the model, missed 10 / 1 / 0 of 51. The
online mean correction (``autoscaler._corrected``) cannot see this: the mean TPOT is
dominated by the bulk, the miss by the tail.

What: per decision interval the autoscaler records the requests that finished and missed
TPOT (``observed``) and the misses the model predicted for them at the fleet and rate they
ran at (``expected = predicted share x completed``). Over a window the ratio of the two is a
standardised incidence ratio; the observed count is Poisson, so its score bounds
(``arrivals.poisson_bounds``) bound the ratio. The model is corrected only as far as the data
surely show: down to ``upper / expected`` when even the upper bound of the misses is below
what was expected, up to ``lower / expected`` when even the lower bound is above it, 1
otherwise (a dead band the data set, as for the rate). With no miss expected and none
observed nothing is learnt. A ratio measured at one fleet size is applied to the others; a
cut that is too deep shows as misses at the smaller fleet, which raises the ratio again.
Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.elastic.arrivals import poisson_bounds

TailCell = tuple[float, float, float]  # (end time s, observed misses, expected misses)


def tail_ratio(cells: Sequence[TailCell], z: float, ceiling: float) -> float:
    """Observed / expected misses over ``cells``, moved from 1 only by what the bounds show;
    at most ``ceiling`` (a model that expected nothing and saw misses is wrong by an unknown
    factor)."""
    if ceiling <= 0:
        raise ValueError(f"ceiling must be positive, got {ceiling}")
    observed = sum(max(0.0, c[1]) for c in cells)
    expected = sum(max(0.0, c[2]) for c in cells)
    lower, upper = poisson_bounds(observed, 1.0, z)
    if expected <= 0:
        return ceiling if lower > 0 else 1.0
    if upper < expected:
        return upper / expected
    if lower > expected:
        return min(lower / expected, ceiling)
    return 1.0
