"""Routing strategies: where a request runs."""

from __future__ import annotations

from collections.abc import Callable

from sage_cp_plugin.routing.affinity import AffinityRouter
from sage_cp_plugin.routing.base import Router, least_loaded
from sage_cp_plugin.routing.kv_aware import KVAwareRouter
from sage_cp_plugin.routing.load_balanced import LoadBalancedRouter
from sage_cp_plugin.routing.locality import LocalityRouter
from sage_cp_plugin.routing.pd import PDRoutingStrategy
from sage_cp_plugin.routing.prefix_aware import PrefixAwareRouter
from sage_cp_plugin.routing.round_robin import RoundRobinRouter

BUILTIN_ROUTERS: dict[str, Callable[..., Router]] = {
    "round_robin": RoundRobinRouter,
    "load_balanced": LoadBalancedRouter,
    "affinity": AffinityRouter,
    "locality": LocalityRouter,
    "prefix_aware": PrefixAwareRouter,
    "kv_aware": KVAwareRouter,
}

__all__ = [
    "BUILTIN_ROUTERS",
    "AffinityRouter",
    "KVAwareRouter",
    "LoadBalancedRouter",
    "LocalityRouter",
    "PDRoutingStrategy",
    "PrefixAwareRouter",
    "RoundRobinRouter",
    "Router",
    "least_loaded",
]
