"""The control plane's status as plain data (the gateway's `/admin/status`, `get_status()`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.strategies import Strategies


def instance_status(s: InstanceState) -> dict[str, Any]:
    return {
        "url": s.instance.base_url,
        "type": s.instance.instance_type.value,
        "models": s.instance.served_models,
        "healthy": s.healthy,
        "circuit_open": s.circuit_open,
        "draining": s.draining,
        "in_flight": s.in_flight,
        "capacity": s.capacity,
    }


def control_plane_status(
    *,
    running: bool,
    strategies: Strategies,
    pending: int,
    running_requests: int,
    fleet: FleetSnapshot,
    kv_cache: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``kv_cache`` adds each instance's prefix-cache knowledge (`KVEventTracker.status`)."""
    instances = {s.instance_id: instance_status(s) for s in fleet}
    if kv_cache is not None:
        for iid, st in instances.items():
            st["kv_cache"] = kv_cache(iid)
    return {
        "running": running,
        "scheduling_policy": strategies.scheduling_policy.describe(),
        "routing_strategy": strategies.routing_strategy,
        "pending_requests": pending,
        "running_requests": running_requests,
        "instances": instances,
    }
