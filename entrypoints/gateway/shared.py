"""The gateway's side of sharing state with other replicas (`sage-cp serve --redis-url`):
start the `FleetShare` before taking traffic, announce admin changes, report the link in
/health and /metrics. Without `--redis-url` nothing here runs."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from .handover import Handover
from .runtime import Gateway
from .settings import GatewaySettings


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
        claim_ttl_s=gateway.settings.request_claim_ttl_s,
    )
    # Reads the shared state first: a new replica never routes from an empty view.
    await share.start()
    gateway.handover = Handover(share.replica_id)
    gateway.share = share
    try:
        yield
    finally:
        gateway.share = None
        handover, gateway.handover = gateway.handover, None
        await handover.aclose()
        await share.stop()


def advertised_url(settings: GatewaySettings, port: int) -> str:
    """Where peers reach this replica: `--advertise-url`, else the bind address (a
    wildcard bind advertises the host's name) and the bound port."""
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening(gateway: Gateway, port: int) -> None:
    """The server is bound: advertise its address to the peers (with the next load)."""
    if gateway.share is not None:
        gateway.share.address = advertised_url(gateway.settings, port)


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
        "# HELP sage_cp_request_claims_total requests with an x-request-id by what their "
        "claim gave: run here (mine, taken_over from a dead replica, unshared: store "
        "unreachable) or handed_over to the live replica running it",
        "# TYPE sage_cp_request_claims_total counter",
        *(
            f'sage_cp_request_claims_total{{outcome="{k}"}} {v}'
            for k, v in share.claims.counts.items()
        ),
    ]
    return ("\n".join(lines) + "\n").encode()
