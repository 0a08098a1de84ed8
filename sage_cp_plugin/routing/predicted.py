"""Pick the candidate with the lowest predicted TTFT (seconds, from `load_model`).

Predictions closer than one decode step are a tie: the engine works in steps, so a
difference below one is noise. Ties go to the candidate whose running requests the new
prefill would delay least (`cost_to_running_s`: sequences decoding there times the prefill
time it adds), then to the one that must compute fewer of the prompt's tokens (a cached
prefix is work the fleet does not do again, even when it saves less than a step of TTFT),
then to the first in a rotation that starts at the request's sequence number, so equal
instances take turns instead of one drawing every request (no herd).
Nothing here has a weight to tune: every quantity is a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.load_model import ttft_step_cost
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import InstanceState


def pick_lowest_ttft(
    item: QueuedRequest,
    candidates: Sequence[InstanceState],
    cached: Sequence[int] | None,
    now: float,
) -> InstanceState | None:
    n = len(candidates)
    if n == 0:
        return None
    start = item.seq % n
    tokens = item.input_tokens
    # The rotation as two slices (no modulo per candidate); `ttft_step_cost` gives each
    # candidate's three times in one call (the inner loop of every load-aware decision).
    order = [*range(start, n), *range(start)]
    j = order[0]
    best: InstanceState = candidates[j]
    best_own = tokens - (cached[j] if cached is not None else 0)
    best_t, best_step, best_cost = ttft_step_cost(best, best_own, now)
    for j in order[1:]:
        c = candidates[j]
        own = tokens - (cached[j] if cached is not None else 0)
        t, step, cost = ttft_step_cost(c, own, now)
        tol = step if step < best_step else best_step
        if t < best_t - tol:
            best, best_t, best_step, best_own, best_cost = c, t, step, own, cost
        elif t <= best_t + tol and (cost < best_cost or (cost == best_cost and own < best_own)):
            best, best_t, best_step, best_cost, best_own = c, t, step, cost, own
    return best
