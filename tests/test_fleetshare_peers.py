"""Peer load as decisions see it, on the virtual clock with the in-memory store: a replica's
bookings reach its peer, take the shared slots, and expire when the replica dies."""

from __future__ import annotations

import asyncio

from sage_cp_plugin.virtual.clock import run_virtual
from tests.helpers import item, sharing_replicas


async def _scenario() -> None:
    (m0, m1), (s0, s1) = await sharing_replicas()
    store = s1.store
    a0, a1 = m0.fleet.states["a"], m1.fleet.states["a"]
    a0.in_flight = 3  # three requests r0 runs on `a` (as the dispatcher books them)
    a0.prefill_tokens_queued, a0.prefill_seqs = 900, 3
    await asyncio.sleep(0.2)
    assert (a1.peer_in_flight, a1.peer_seqs) == (3, 3)
    assert a1.peer_prefill_tokens > 0
    # Slots are shared: one left on `a` for r1, not four.
    assert m1.pools.has_room(a1, item(1, model_name="m"))
    a1.in_flight = 1
    assert not m1.pools.has_room(a1, item(2, model_name="m"))
    # r0 dies without a word: its tasks stop, its key expires, r1 forgets its bookings.
    for t in s0._tasks:
        t.cancel()
    await asyncio.sleep(1.0)
    assert a1.peer_in_flight == 3  # within the TTL the bookings still count
    await asyncio.sleep(3.0)
    assert a1.peer_in_flight == 0 and m1.pools.has_room(a1, item(3, model_name="m"))
    assert set(await store.get_loads()) == {"r1"}  # r0's key expired in the store too
    await s1.stop()


def test_peer_bookings_take_shared_slots_and_expire_with_their_replica() -> None:
    run_virtual(_scenario())
