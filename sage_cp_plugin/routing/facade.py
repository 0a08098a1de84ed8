"""The document's `RequestRouter` and `LoadBalancer`, over plain `ExecutionInstance` lists.

The coordinator uses routers directly on live `InstanceState`; these wrappers serve code
written against the document, which passes `ExecutionInstance` objects around.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_cp_plugin.errors import NoInstanceError
from sage_cp_plugin.policies.base import make_item
from sage_cp_plugin.routing.base import Router, least_loaded
from sage_cp_plugin.routing.pd import PDRoutingStrategy
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import ExecutionInstance, ExecutionInstanceType, RequestMetadata


class RequestRouter:
    """Routes one request among instances with a named strategy (a plugin)."""

    def __init__(self, routing_strategy: str = "load_balanced", **options: Any) -> None:
        from sage_cp_plugin.plugins import get_registry

        self.routing_strategy = routing_strategy
        self.router: Router = get_registry().create("router", routing_strategy, **options)
        self._states: dict[str, InstanceState] = {}
        self._seq = 0

    def _state(self, inst: ExecutionInstance) -> InstanceState:
        st = self._states.get(inst.instance_id)
        if st is None or st.instance is not inst:
            st = InstanceState(instance=inst)
            self._states[inst.instance_id] = st
        st.healthy = inst.is_healthy and inst.is_available
        return st

    async def select_instance(
        self,
        request: RequestMetadata,
        available_instances: Sequence[ExecutionInstance],
        phase: ExecutionInstanceType | str | None = None,
    ) -> ExecutionInstance:
        states = [self._state(i) for i in available_instances if i.serves(request.model_name)]
        states = [s for s in states if s.routable and s.has_capacity]
        if phase is not None:
            states = PDRoutingStrategy().filter_by_phase(states, ExecutionInstanceType(phase))
        if not states:
            raise NoInstanceError(
                f"no healthy instance with capacity serves model {request.model_name!r}"
            )
        self._seq += 1
        item = make_item(request, now=0.0, seq=self._seq)
        chosen = self.router.select(item, states, FleetSnapshot({s.instance_id: s for s in states}))
        if chosen is None:
            raise NoInstanceError("router found no instance")
        self.router.on_dispatch(item, chosen)
        return chosen.instance


class LoadBalancer:
    """The document's least-loaded helper."""

    def get_least_loaded_instance(
        self, instances: Sequence[ExecutionInstance]
    ) -> ExecutionInstance | None:
        states = [
            InstanceState(instance=i, in_flight=int(i.metadata.get("active_requests", 0)))
            for i in instances
            if i.is_healthy and i.is_available
        ]
        return least_loaded(states).instance if states else None
