"""A replica's peers hear a request's end (and its first token) when it happens, not at the
next publish tick: on the virtual clock, two replicas sharing state through the in-memory
store in front of one in-process simulated instance."""

from __future__ import annotations

import asyncio

from sage_cp_plugin.fleetshare.store import InMemoryFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.types import RequestMetadata
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.runner import CoordinatorConfig

DELIVERY_S = 0.0005
# A publish tick longer than the request: its end cannot ride on a tick in this test.
TICK_S = 1.0


async def _scenario() -> tuple[int, int, int]:
    fleet = InProcessFleet([SimInstanceConfig(seed=1)])
    managers = [CoordinatorConfig(router="prefix_aware").build(fleet, 10) for _ in range(2)]
    store = InMemoryFleetStateStore(delivery_delay_s=DELIVERY_S)
    shares = [FleetShare(m, store, f"r{i}", publish_interval_s=TICK_S)
              for i, m in enumerate(managers)]  # fmt: skip
    for m in managers:
        await m.start()
    for s in shares:
        await s.start()
    try:
        peer_view = managers[1].fleet.states[fleet.instances[0].instance_id]
        rid = await managers[0].submit_request(
            RequestMetadata(request_id="x", prompt="hello " * 200, max_tokens=40)
        )
        await asyncio.sleep(0.002)
        booked = peer_view.peer_in_flight
        result = await managers[0].wait(rid)
        assert result.state.value == "completed"
        assert asyncio.get_running_loop().time() < TICK_S  # ended before any tick
        # A few deliveries after its end.
        await asyncio.sleep(4 * DELIVERY_S)
        return booked, peer_view.peer_in_flight, peer_view.peer_seqs
    finally:
        for s in shares:
            await s.stop()
        for m in managers:
            await m.stop()
        await fleet.aclose()


def test_peers_hear_a_request_end_within_a_delivery_not_a_tick() -> None:
    booked, in_flight_after, seqs_after = run_virtual(_scenario())
    assert booked == 1  # the dispatch reached the peer (published at once, as before)
    assert (in_flight_after, seqs_after) == (0, 0)  # and so did its end
