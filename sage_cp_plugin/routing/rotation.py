"""Where a tie-break rotation starts, so that replicas of the control plane deciding at the
same moment spread over the fleet instead of moving in lockstep.

One coordinator breaks ties (and round robin picks) by a rotation that starts at its own
counter (the request's admission sequence number, or the dispatch count). N replicas behind
a client that spreads requests over them in turn have counters that advance together, so
the first request each receives goes to the same instance, and so on: N decisions made
before any replica heard of the others pile onto one instance.

Each replica knows its index among its live peers (`fleetshare`: the sorted ids of every
replica it hears, itself included), so replica `i` of `N` takes the turns `i, i+N, i+2N, ...`
of one shared rotation: behind a client spreading requests over the replicas in turn, the
N replicas together move one cursor over the fleet, as one process would. A stride alone
would make a replica that gets most of the traffic skip instances when `N` and the number
of candidates `n` share a factor (N=2, n=8: even instances only), so after every full lap
of the shared rotation (lcm(N, n) turns) it moves on by one: each replica alone then still
visits every instance once in `n` of its own turns, whatever share the client gives it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# (this replica's index among its live peers, how many live replicas): one process alone.
ALONE = (0, 1)


def replica_slot(own_id: str, peer_ids: Iterable[str]) -> tuple[int, int]:
    """This replica's index among all live replicas (ids sorted, so every replica that hears
    the same set computes the same order) and their number."""
    live = sorted({own_id, *peer_ids})
    return live.index(own_id), len(live)


def rotation_start(turn: int, n: int, replica: tuple[int, int]) -> int:
    """First of `n` candidates to scan at this replica's `turn` (its own counter)."""
    index, count = replica
    if count == 1:  # one process: its own turn (what the lines below give, without gcd)
        return turn % n
    shared = turn * count + index  # this turn's place in the replicas' one rotation
    common = math.gcd(n, count)
    if common == 1:
        return shared % n  # the stride visits every instance by itself
    lap = n * count // common
    return (shared + shared // lap) % n
