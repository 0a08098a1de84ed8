"""The gateway's side of sharing state with other replicas (`sage-cp serve --redis-url`):
start the `FleetShare` before taking traffic, announce admin changes, report the link in
/health and /metrics. Without `--redis-url` nothing here runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .runtime import Gateway


@contextlib.asynccontextmanager
async def sharing(gateway: Gateway) -> AsyncIterator[None]:
    url = gateway.settings.redis_url
    if url is None:
        yield
        return
    from sage_cp_plugin.fleetshare.redis_store import RedisFleetStateStore
    from sage_cp_plugin.fleetshare.sync import FleetShare

    def drain(instance_id: str, remove: bool) -> None:
        if remove:
            gateway.drain_and_remove(instance_id)
        else:
            gateway.manager.drain_instance(instance_id)

    share = FleetShare(
        gateway.manager,
        RedisFleetStateStore(url, namespace=gateway.settings.redis_namespace),
        gateway.settings.replica_id,
        on_drain=drain,
    )
    # Reads the shared state first: a new replica never routes from an empty view.
    await share.start()
    gateway.share = share
    try:
        yield
    finally:
        gateway.share = None
        await share.stop()


async def announce(gateway: Gateway, **change: Any) -> None:
    """Send an admin change made here to every replica (kept locally when Redis is away)."""
    if gateway.share is not None:
        await gateway.share.announce_admin(**change)


def health_fields(gateway: Gateway) -> dict[str, Any]:
    return {"shared_state": gateway.share.describe()} if gateway.share is not None else {}


def prometheus_lines(gateway: Gateway) -> bytes:
    share = gateway.share
    if share is None:
        return b""
    s = share.status
    lines = [
        "# HELP sage_cp_shared_state_connected 1 when the shared state (Redis) is reachable",
        "# TYPE sage_cp_shared_state_connected gauge",
        f"sage_cp_shared_state_connected {1 if s.connected else 0}",
        "# HELP sage_cp_shared_state_peers peer replicas heard within the load TTL",
        "# TYPE sage_cp_shared_state_peers gauge",
        f"sage_cp_shared_state_peers {len(share.peers.by_replica)}",
        "# HELP sage_cp_shared_state_disconnects_total times the shared state was lost",
        "# TYPE sage_cp_shared_state_disconnects_total counter",
        f"sage_cp_shared_state_disconnects_total {s.disconnects}",
        "# HELP sage_cp_shared_state_resyncs_total resynchronisations after a loss",
        "# TYPE sage_cp_shared_state_resyncs_total counter",
        f"sage_cp_shared_state_resyncs_total {s.resyncs}",
    ]
    return ("\n".join(lines) + "\n").encode()
