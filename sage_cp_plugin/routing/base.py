"""The router interface: *where* a request runs, among candidates the coordinator filtered.

Candidates are healthy, not draining, serve the request's model and role, and have
capacity. A router is a pure decision over them (no I/O, no awaits). `on_dispatch` and
`on_finish` let stateful routers (prefix index, round-robin cursor) learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class Router:
    name: str = "base"

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"unexpected options for router {self.name!r}: {sorted(options)}")

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        raise NotImplementedError

    def on_dispatch(self, item: QueuedRequest, state: InstanceState) -> None:
        """The request was sent to `state`."""

    def on_finish(self, item: QueuedRequest, state: InstanceState, ok: bool) -> None:
        """The request finished on `state`."""

    def on_instance_removed(self, instance_id: str) -> None:
        """Forget an instance (deregistered)."""


def least_loaded(candidates: Sequence[InstanceState], start: int = 0) -> InstanceState:
    """Minimum load; ties broken by rotating the scan start so equal instances share work."""
    n = len(candidates)
    best = candidates[start % n]
    best_load = best.load
    for i in range(1, n):
        s = candidates[(start + i) % n]
        load = s.load
        if load < best_load:
            best, best_load = s, load
    return best
