"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018).

Keys map to a ring of virtual nodes; a key goes to the first instance clockwise whose load
is below ``ceil((1 + epsilon) * average load)``. Adding or removing an instance moves only
~1/n of the keys, and no instance takes more than (1 + epsilon) times its fair share, so
one hot user or prefix cannot overload an instance.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence

from sage_cp_plugin.state import InstanceState


def stable_hash(data: str) -> int:
    """64-bit hash that is the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, vnodes: int = 64) -> None:
        self.vnodes = vnodes
        self._members: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []

    def _rebuild(self, members: frozenset[str]) -> None:
        pairs = sorted((stable_hash(f"{m}#{v}"), m) for m in members for v in range(self.vnodes))
        self._points = [p for p, _ in pairs]
        self._owners = [m for _, m in pairs]
        self._members = members

    def lookup(
        self, key: str, candidates: Sequence[InstanceState], epsilon: float
    ) -> InstanceState | None:
        if not candidates:
            return None
        by_id = {c.instance_id: c for c in candidates}
        members = frozenset(by_id)
        if members != self._members:
            self._rebuild(members)
        total = sum(c.in_flight for c in candidates) + 1  # +1: the request being placed
        bound = math.ceil((1 + epsilon) * total / len(candidates))
        start = bisect.bisect(self._points, stable_hash(key)) % len(self._points)
        seen: set[str] = set()
        n = len(self._points)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner in seen:
                continue
            seen.add(owner)
            state = by_id[owner]
            if state.in_flight < bound:
                return state
            if len(seen) == len(by_id):
                break
        return by_id[self._owners[start]]
