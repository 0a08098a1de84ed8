"""Pick the candidate with the lowest predicted TTFT (seconds, from `load_model`).

Predictions closer than one decode step are a tie: the engine works in steps, so a
difference below one is noise. Ties go to the candidate whose running requests the new
prefill would delay least (`cost_to_running_s`: sequences decoding there times the prefill
time it adds), then to the one that must compute fewer of the prompt's tokens (a cached
prefix is work the fleet does not do again, even when it saves less than a step of TTFT),
then to the first in a rotation that starts at the request's sequence number, so equal
instances take turns instead of one drawing every request (no herd); replicas of the
control plane start it at different places (`routing.rotation`).

Replicas of the control plane (N > 1) hear each other's bookings a message delivery late
(`fleetshare`), so a replica's view of the sequences running on an instance can lack one
unheard booking per peer. Costs closer than that, N - 1 sequences' worth, cannot be told
apart and count as equal: the next rules decide, down to the rotation, which differs per
replica. Without it, replicas deciding within one delivery delay all ranked the same
instance first by its running sequences and sent their requests there together. A replica
collects the whole tied set and takes the member at its turn of the shared rotation
(`_pick_among_ties`): a scan from its rotated start, as one process does, reaches the same
first tied instance from every start between two tied ones, so replicas deciding at once
still met there whenever the tied instances were not side by side.
Nothing here has a weight to tune: every quantity is a time. A router may widen the tie
from one decode step (`tie`): `prefix_aware` measures the step against the request's TPOT
objective (`routing.tie_tolerance`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sage_cp_plugin import table_times
from sage_cp_plugin.fleet_table import Candidates
from sage_cp_plugin.load_model import candidate_times, prefill_s_per_token
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.pruned_pick import pick_index
from sage_cp_plugin.routing.rotation import rotation_start
from sage_cp_plugin.state import InstanceState


@dataclass(slots=True)
class Times:
    """Each candidate's prompt tokens to compute (`owns`), predicted TTFT, decode step and
    cost to the requests running there, in the candidates' order."""

    owns: list[int]
    ttfts: list[float]
    steps: list[float]
    costs: list[float]
    # With peer replicas: each candidate's cost difference below which two costs are equal
    # (N - 1 sequences' worth, module docstring); None for one process.
    cost_tols: list[float] | None = None


# How close two predicted TTFTs are to tie, from the request and a candidate's decode step
# (`routing.tie_tolerance`); None: one decode step.
Tie = Callable[[QueuedRequest, float], float]


def candidate_ttfts(
    item: QueuedRequest,
    candidates: Sequence[InstanceState],
    cached: Sequence[int] | None,
    now: float,
) -> Times:
    tokens = item.input_tokens
    owns = [tokens - c for c in cached] if cached is not None else [tokens] * len(candidates)
    if isinstance(candidates, Candidates):
        # Candidates with rows in the fleet table: their load read from its buffer (the
        # same floats as `candidate_times`, at a fraction of the cache misses).
        ttfts, steps, costs = table_times.candidate_times(
            candidates.table, candidates.row_list, owns, now
        )
    else:
        # Every candidate's times in one call (the inner loop of a load-aware decision).
        ttfts, steps, costs = candidate_times(candidates, owns, now)
    peers = item.replica[1] - 1
    if peers <= 0:
        return Times(owns, ttfts, steps, costs)
    tols = [peers * own * prefill_s_per_token(s) for s, own in zip(candidates, owns, strict=True)]
    return Times(owns, ttfts, steps, costs, tols)


def pick_lowest_ttft(
    item: QueuedRequest,
    candidates: Sequence[InstanceState],
    cached: Sequence[int] | None,
    now: float,
    tie: Tie | None = None,
) -> InstanceState | None:
    if not candidates:
        return None
    if isinstance(candidates, Candidates) and item.replica[1] == 1:
        # Rows in the fleet table: the same scan, predicting only the candidates that can
        # change its outcome (`pruned_pick`; None: a fleet it does not cover). Replicas
        # compare costs with a tolerance it does not prune by: they take the plain scan.
        picked = pick_index(item, candidates, cached, now, tie)
        if picked is not None:
            return candidates[picked]
    times = candidate_ttfts(item, candidates, cached, now)
    return candidates[lowest_ttft_index(item, times, tie)]


def lowest_ttft_index(item: QueuedRequest, times: Times, tie: Tie | None = None) -> int:
    """The candidate to pick from its times (the rules in the module's docstring; `tie`
    widens a decode step into the tolerance within which TTFTs tie)."""
    owns, ttfts, steps, costs = times.owns, times.ttfts, times.steps, times.costs
    if tie is not None:
        # Tolerances grow with the step, so the smaller of two candidates' tolerances is
        # that of the smaller step, as the scans below assume.
        steps = [tie(item, s) for s in steps]
    n = len(ttfts)
    if times.cost_tols is not None:  # a replica with peers
        return _pick_among_ties(item, ttfts, steps, costs, owns, times.cost_tols)
    # One process: the scan in the rotation that starts at the request's sequence number.
    start = rotation_start(item.seq, n, item.replica)
    if steps.count(steps[0]) == n:
        return _scan_one_step(ttfts, steps[0], costs, owns, start)
    return _scan(ttfts, steps, costs, owns, start)


def _pick_among_ties(
    item: QueuedRequest,
    ttfts: list[float],
    steps: list[float],
    costs: list[float],
    owns: list[int],
    cost_tols: list[float],
) -> int:
    """A replica with peers: the set of candidates that tie by the rules (TTFT within a step
    of the lowest, then cost within the tolerance of the lowest among those, then fewest
    tokens to compute), and of that set the member at this replica's turn of the shared
    rotation (`routing.rotation`).

    Why a set and not the scan from a rotated start: replicas deciding within one message
    delivery of each other see the same loads and take consecutive turns of the rotation.
    A scan from consecutive starts ends on the same instance whenever the tied instances are
    not adjacent (every start between two tied instances reaches the same next one), so they
    piled onto it together; indexing the tied set with consecutive turns gives each of them
    a different member, as one process would after hearing its own bookings."""
    n = len(ttfts)
    best = min(range(n), key=ttfts.__getitem__)
    t_best, s_best = ttfts[best], steps[best]
    tied = [j for j in range(n) if ttfts[j] <= t_best + (steps[j] if steps[j] < s_best else s_best)]
    cheapest = min(tied, key=costs.__getitem__)
    c_best, ct_best = costs[cheapest], cost_tols[cheapest]
    tied = [
        j
        for j in tied
        if costs[j] <= c_best + (cost_tols[j] if cost_tols[j] < ct_best else ct_best)
    ]
    fewest = min(owns[j] for j in tied)
    tied = [j for j in tied if owns[j] == fewest]
    return tied[rotation_start(item.seq, len(tied), item.replica)]


def _scan_one_step(
    ttfts: list[float], tol: float, costs: list[float], owns: list[int], start: int
) -> int:
    """The scan above when every candidate has the same decode step (one speed class, the
    usual fleet): the tolerance is that step, so the bounds `best_t -/+ tol` are computed
    once per new best instead of per candidate (the same floats, the same choice)."""
    n = len(ttfts)
    b = start
    best_t, best_cost, best_own = ttfts[b], costs[b], owns[b]
    lo, hi = best_t - tol, best_t + tol
    for j in (*range(start + 1, n), *range(start)):
        t = ttfts[j]
        if t < lo:
            b, best_t, best_cost, best_own = j, t, costs[j], owns[j]
            lo, hi = t - tol, t + tol
        elif t <= hi:
            cost, own = costs[j], owns[j]
            if cost < best_cost or (cost == best_cost and own < best_own):
                b, best_t, best_cost, best_own = j, t, cost, own
                lo, hi = t - tol, t + tol
    return b


def _scan(
    ttfts: list[float], steps: list[float], costs: list[float], owns: list[int], start: int
) -> int:
    """The scan of `lowest_ttft_index` for one process: TTFTs within the smaller of two
    candidates' decode steps tie; then the lower cost, then fewer tokens to compute."""
    n = len(ttfts)
    b = start
    best_t, best_step, best_cost, best_own = ttfts[b], steps[b], costs[b], owns[b]
    for j in (*range(start + 1, n), *range(start)):
        t, step = ttfts[j], steps[j]
        tol = step if step < best_step else best_step
        if t < best_t - tol:
            b, best_t, best_step, best_cost, best_own = j, t, step, costs[j], owns[j]
        elif t <= best_t + tol:
            cost, own = costs[j], owns[j]
            if cost < best_cost or (cost == best_cost and own < best_own):
                b, best_t, best_step, best_cost, best_own = j, t, step, cost, own
    return b
