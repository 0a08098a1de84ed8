"""Request-id claims between replicas (fleetshare/claims.py), on the virtual clock with the
in-memory store: which replica runs an id, when a resend is handed to the owner, when a dead
owner's claim is taken over, and what happens while the store is unreachable.

The HTTP side (the handover itself, real Redis, killed replicas) is in
tests/test_request_claims_redis.py."""

from __future__ import annotations

import asyncio
import socket

from sage_cp_plugin.entrypoints.gateway import GatewaySettings
from sage_cp_plugin.entrypoints.gateway.shared import advertised_url

from sage_cp_plugin.fleetshare.claims import HandOver, Run
from sage_cp_plugin.fleetshare.store import InMemoryFleetStateStore
from sage_cp_plugin.virtual.clock import run_virtual
from tests.helpers import sharing_replicas


async def _scenario() -> None:
    (_m0, _m1, _m2), (s0, s1, s2) = await sharing_replicas(3, ttl_s=3.0)
    s0.address, s1.address, s2.address = "http://h0:1", "http://h1:1", "http://h2:1"
    await asyncio.sleep(1.2)  # a heartbeat carries the addresses (every TTL/3)
    assert s1.peers.address("r0", s1.manager.now()) == "http://h0:1"

    # The first replica to see an id runs it; another, given it meanwhile, hands it over.
    assert await s0.claims.claim("job-1") == Run("mine")
    assert await s1.claims.claim("job-1") == HandOver("r0", "http://h0:1")
    assert await s2.claims.claim("job-1") == HandOver("r0", "http://h0:1")
    assert await s0.claims.claim("job-1") == Run("mine")  # its own resend: it runs it

    # r0 dies without a word: within the TTL its claim still sends resends to it (the
    # handover then fails and the sender takes over, tests/test_request_claims_redis.py);
    # after it, the first replica to see the id takes the claim, and the others follow it.
    for t in s0._tasks:
        t.cancel()
    await asyncio.sleep(1.0)
    assert await s1.claims.claim("job-1") == HandOver("r0", "http://h0:1")
    await asyncio.sleep(3.0)
    assert await s1.claims.claim("job-1") == Run("taken_over")
    assert await s2.claims.claim("job-1") == HandOver("r1", "http://h1:1")
    # A takeover races another: the claim moves once; the loser follows the winner.
    assert await s2.claims.take_over("job-1", "r0") == HandOver("r1", "http://h1:1")

    # The store unreachable: every replica runs what it is given, and says so.
    store = s1.store
    assert isinstance(store, InMemoryFleetStateStore)
    store.up = False
    assert await s2.claims.claim("job-2") == Run("unshared")
    await asyncio.sleep(0.5)  # the replicas notice the loss: no round trip per request then
    assert not s2.status.connected
    assert await s2.claims.claim("job-3") == Run("unshared")
    assert s2.claims.counts == {"mine": 0, "handed_over": 3, "taken_over": 0, "unshared": 2}
    assert s1.claims.counts == {"mine": 0, "handed_over": 2, "taken_over": 1, "unshared": 0}
    store.up = True
    for s in (s1, s2):
        await s.stop()


def test_one_replica_runs_an_id_and_a_dead_ones_claim_is_taken_over() -> None:
    run_virtual(_scenario())


async def _expiry() -> None:
    store = InMemoryFleetStateStore()
    for i in range(5000):
        await store.claim(f"id-{i}", "r0", ttl_s=10.0)
        await asyncio.sleep(0.01)  # 100 claims a second
    # Claims expire as Redis keys do: what is held is about one TTL's worth, not all.
    assert len(store.claims) <= 10.0 / 0.01 + 1024
    assert await store.claim("id-4999", "r1", ttl_s=10.0) == "r0"  # a live one holds
    assert await store.claim("id-0", "r1", ttl_s=10.0) == "r1"  # an expired one is free


def test_in_memory_claims_expire_and_stay_bounded() -> None:
    run_virtual(_expiry())


def test_a_replica_advertises_where_peers_reach_it() -> None:
    assert advertised_url(GatewaySettings(), 8080) == "http://127.0.0.1:8080"
    assert advertised_url(GatewaySettings(host="::1"), 81) == "http://[::1]:81"
    # A wildcard bind is no address a peer can use: the host's name is.
    assert advertised_url(GatewaySettings(host="0.0.0.0"), 9) == f"http://{socket.gethostname()}:9"
    given = GatewaySettings(advertise_url="http://gw-2.internal:8080/")
    assert advertised_url(given, 1234) == "http://gw-2.internal:8080"
