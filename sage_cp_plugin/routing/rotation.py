"""Where a tie-break rotation starts, so that replicas of the control plane deciding at the
same moment spread over the fleet instead of moving in lockstep.

One coordinator breaks ties (and round robin picks) by a rotation that starts at its own
counter (the request's admission sequence number, or the dispatch count). N replicas behind
a client that spreads requests over them in turn have counters that advance together, so
the first request each receives goes to the same instance, and so on: N decisions made
before any replica heard of the others pile onto one instance.

Each replica knows its index among its live peers (`fleetshare`: the sorted ids of every
replica it hears, itself included), so replica `i` of `N` starts its rotation `i/N` of the
way round the candidates: N replicas at the same count pick N different instances (while
there are at least N), and each replica alone still visits every instance in turn,
whatever share of the traffic the client gives it. A stride (replica `i` taking turns
`i, i+N, i+2N, ...`) would make them one cursor only while the client is perfectly even,
and would skip instances (every `gcd(N, n)`-th) when one replica gets most of the traffic.
"""

from __future__ import annotations

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
    return (turn + index * n // count) % n
