"""The decision makers in force: the scheduling policy, the router, and the prefill/decode
routers and splitter. One object so a run-time swap (`update_policy`, `update_router`) is
seen at once by admission, the dispatcher and the attempts, which all read it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from sage_cp_plugin.disaggregation import Disaggregator
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.plugins import get_registry
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.pd import PDRoutingStrategy
from sage_cp_plugin.types import PDSeparationConfig, RequestMetadata

_NO_LANES: Mapping[str, SchedulingPolicy] = MappingProxyType({})


@runtime_checkable
class LanedRouter(Protocol):
    """A router that gives parts of the traffic their own instances (a split-fleet
    experiment) may give each part its own lane of the queue, so one part's busy instances
    never hold the others' requests back, and a scheduling policy of its own."""

    def lane_of(self, request: RequestMetadata) -> str | None:
        """The lane (its own heap per pool) the request waits in; None: the shared one."""
        ...

    def lane_policies(self) -> Mapping[str, SchedulingPolicy]:
        """Lanes ordered by a policy of their own (the others by the coordinator's)."""
        ...


class Strategies:
    def __init__(
        self,
        *,
        policy_name: str,
        policy_options: dict[str, Any] | None,
        routing_strategy: str,
        router_options: dict[str, Any] | None,
        pd_config: PDSeparationConfig,
        enable_pd_separation: bool,
    ) -> None:
        registry = get_registry()
        self.policy_name = policy_name
        self.scheduling_policy: SchedulingPolicy = registry.create(
            "policy", policy_name, **(policy_options or {})
        )
        self.routing_strategy = routing_strategy
        self.router = registry.create("router", routing_strategy, **(router_options or {}))
        self.pd_config = pd_config
        # Phase tagging and tier filtering (prefill vs decode instances), when enabled.
        self.pd_router: PDRoutingStrategy | None = (
            PDRoutingStrategy(pd_config) if enable_pd_separation and pd_config.enabled else None
        )
        # vLLM's two-step protocol: prefill on one instance, decode on another.
        self.disaggregator = Disaggregator(pd_config)
        self.prefill_router: Router = registry.create("router", pd_config.prefill_router)
        self.decode_router: Router = registry.create("router", pd_config.decode_router)

    # -- which policy orders a request ----------------------------------------------------
    def policy_for(self, item: QueuedRequest) -> SchedulingPolicy:
        """The policy of the request's lane when the router gives it one (a split-fleet
        experiment's arm), else the coordinator's."""
        if item.lane is not None:
            own = self.lane_policies().get(item.lane)
            if own is not None:
                return own
        return self.scheduling_policy

    @property
    def router(self) -> Router:
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        self._router = router
        # Checked once per router, not per request (a protocol isinstance is not free).
        self._laned: LanedRouter | None = router if isinstance(router, LanedRouter) else None

    def lane_of(self, request: RequestMetadata) -> str | None:
        return None if self._laned is None else self._laned.lane_of(request)

    def lane_policies(self) -> Mapping[str, SchedulingPolicy]:
        return _NO_LANES if self._laned is None else self._laned.lane_policies()

    def queue_key(self, item: QueuedRequest) -> tuple[float, ...]:
        """The request's place in its queue, by the policy that orders its lane."""
        return self.policy_for(item).key(item)

    def policies(self) -> list[SchedulingPolicy]:
        """Every policy in use: the coordinator's, then the lanes' own."""
        return [self.scheduling_policy, *self.lane_policies().values()]

    def update_policy(self, name: str, **options: Any) -> SchedulingPolicy:
        self.scheduling_policy = get_registry().create("policy", name, **options)
        self.policy_name = name
        return self.scheduling_policy

    def update_router(self, name: str, **options: Any) -> Router:
        self.router = get_registry().create("router", name, **options)
        self.routing_strategy = name
        return self.router
