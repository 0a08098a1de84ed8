"""Round robin over the candidates, in registration order.

The cursor advances when a request is dispatched (`on_dispatch`), not when one is merely
considered: `select` is a pure decision, so a choice that is not taken moves nothing.
Replicas of the control plane start their cursors at different places (`routing.rotation`),
so a client spreading requests over them in turn does not send the first of each to one
instance."""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.rotation import rotation_start
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class RoundRobinRouter(Router):
    name = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self._next = 0

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        return candidates[rotation_start(self._next, len(candidates), fleet.replica)]

    def on_dispatch(self, item: QueuedRequest, state: InstanceState) -> None:
        self._next += 1
