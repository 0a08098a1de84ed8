"""The decision makers in force: the scheduling policy, the router, and the prefill/decode
routers and splitter. One object so a run-time swap (`update_policy`, `update_router`) is
seen at once by admission, the dispatcher and the attempts, which all read it here.
"""

from __future__ import annotations

from typing import Any

from sage_cp_plugin.disaggregation import Disaggregator
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.plugins import get_registry
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.pd import PDRoutingStrategy
from sage_cp_plugin.types import PDSeparationConfig


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
        self.router: Router = registry.create("router", routing_strategy, **(router_options or {}))
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
            own = self.router.lane_policies().get(item.lane)
            if own is not None:
                return own
        return self.scheduling_policy

    def queue_key(self, item: QueuedRequest) -> tuple[float, ...]:
        """The request's place in its queue, by the policy that orders its lane."""
        return self.policy_for(item).key(item)

    def policies(self) -> list[SchedulingPolicy]:
        """Every policy in use: the coordinator's, then the lanes' own."""
        return [self.scheduling_policy, *self.router.lane_policies().values()]

    def update_policy(self, name: str, **options: Any) -> SchedulingPolicy:
        self.scheduling_policy = get_registry().create("policy", name, **options)
        self.policy_name = name
        return self.scheduling_policy

    def update_router(self, name: str, **options: Any) -> Router:
        self.router = get_registry().create("router", name, **options)
        self.routing_strategy = name
        return self.router
