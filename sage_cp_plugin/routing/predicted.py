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

from sage_cp_plugin.load_model import cost_to_running_s, decode_step_s, predicted_ttft_s
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
    best: InstanceState | None = None
    best_t = best_cost = best_step = 0.0
    best_own = 0
    for i in range(n):
        j = (start + i) % n
        c = candidates[j]
        own = tokens - (cached[j] if cached is not None else 0)
        t = predicted_ttft_s(c, own, now)
        if best is None:
            best, best_t, best_step, best_own = c, t, decode_step_s(c), own
            best_cost = cost_to_running_s(c, own, now)
            continue
        step = decode_step_s(c)
        tol = step if step < best_step else best_step
        if t < best_t - tol:
            best, best_t, best_step, best_own = c, t, step, own
            best_cost = cost_to_running_s(c, own, now)
        elif t <= best_t + tol:
            cost = cost_to_running_s(c, own, now)
            if cost < best_cost or (cost == best_cost and own < best_own):
                best, best_t, best_step, best_cost, best_own = c, t, step, cost, own
    return best
