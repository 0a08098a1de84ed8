"""Replicas of the gateway sharing one fleet through a REAL redis-server (started here).

Each replica is a separate `ControlPlaneManager` + gateway (separate state, as three
processes would have; they share only Redis) in front of one simulated fleet on loopback.
Other machines cannot exist here: the replicas run on one host, over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sage_cp_plugin.entrypoints.gateway import Gateway, GatewaySettings, serving

from sage_cp_plugin.config import ControlPlaneConfig, sim_instances
from sage_cp_plugin.sim import SimFleet
from tests.helpers import wait_until
from tests.redis_server import RedisServer
from tests.test_gateway_support import FAST_HEALTH, gen

ADMIN = {"authorization": "Bearer adm"}
BODY = {"model": "sim-model", "prompt": "hello", "max_tokens": 3}


@contextlib.asynccontextmanager
async def replica(
    fleet: SimFleet, redis_url: str, rid: str, **config: Any
) -> AsyncIterator[tuple[str, Gateway]]:
    cfg = ControlPlaneConfig(
        instances=sim_instances(fleet.members), scheduling_policy="fifo", health=FAST_HEALTH,
        **config,
    )  # fmt: skip
    manager = cfg.build_manager()
    await manager.start()
    settings = GatewaySettings(port=0, admin_key="adm", redis_url=redis_url, replica_id=rid)
    try:
        async with serving(manager, settings) as (url, gw):
            yield url, gw
    finally:
        await manager.stop()


@contextlib.asynccontextmanager
async def three_replicas(
    redis: RedisServer, time_scale: float
) -> AsyncIterator[tuple[list[tuple[str, Gateway]], contextlib.AsyncExitStack]]:
    async with SimFleet(gen(2, time_scale=time_scale)) as fleet, contextlib.AsyncExitStack() as st:
        reps = [await st.enter_async_context(replica(fleet, redis.url, f"r{i}")) for i in range(3)]
        yield reps, st


def published_in_flight(gw: Gateway, n: int) -> Any:
    """A condition: the replica's load as Redis holds it counts `n` requests in flight."""

    async def holds() -> bool:
        assert gw.share is not None
        loads = await gw.share.store.get_loads()
        mine = loads.get(gw.share.replica_id, {})
        # Per instance a list; fields starting with "~" are not instances (~addr, ~usage).
        return sum(int(v[0]) for k, v in mine.items() if not k.startswith("~")) == n

    return holds


def connected(gw: Gateway) -> bool:
    return gw.share is not None and gw.share.status.connected


async def test_admin_changes_and_load_reach_every_replica(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        async with three_replicas(redis, time_scale=0.3) as (reps, _st):
            gws = [gw for _, gw in reps]
            assert all(connected(gw) for gw in gws)
            async with httpx.AsyncClient(base_url=reps[0][0], headers=ADMIN, timeout=30) as c0:
                # A policy switch on replica 0 is in force on all three.
                r = await c0.put("/admin/policy", json={"name": "priority"})
                assert r.status_code == 200
                await wait_until(
                    lambda: all(gw.manager.policy_name == "priority" for gw in gws),
                    "policy switched on every replica",
                )
                await c0.put("/admin/router", json={"name": "round_robin"})
                await wait_until(
                    lambda: all(gw.manager.routing_strategy == "round_robin" for gw in gws),
                    "router switched on every replica",
                )
                # Load: slow requests through replica 0 are seen as peer load by the others.
                slow = {**BODY, "max_tokens": 60}
                running = [
                    asyncio.create_task(c0.post("/v1/completions", json=slow)) for _ in range(4)
                ]
                await wait_until(
                    lambda: all(
                        sum(s.peer_in_flight for s in gw.manager.fleet) == 4 for gw in gws[1:]
                    ),
                    "replica 0's four requests booked on replicas 1 and 2",
                )
                assert all(r.status_code == 200 for r in await asyncio.gather(*running))
                await wait_until(
                    lambda: all(sum(s.peer_in_flight for s in gw.manager.fleet) == 0 for gw in gws),
                    "bookings released everywhere",
                )
            # A drain on replica 2 (without removal) drains the instance on all three.
            async with httpx.AsyncClient(base_url=reps[2][0], headers=ADMIN, timeout=30) as c2:
                r = await c2.post("/admin/instances/sim-1/drain?remove=false")
                assert r.status_code == 202
            await wait_until(
                lambda: all(gw.manager.fleet.states["sim-1"].draining for gw in gws),
                "sim-1 draining on every replica",
            )
            async with httpx.AsyncClient(base_url=reps[1][0], timeout=30) as c1:
                answers = [await c1.post("/v1/completions", json=BODY) for _ in range(4)]
            assert {a.headers["x-sage-instance"] for a in answers} == {"sim-0"}
            # An instance registered through replica 1's admin API is routed to by every
            # replica; removed through replica 2's, it is gone from all three.
            async with SimFleet(gen(1, time_scale=0.3)) as extra:
                new = {"instance_id": "extra", "host": "127.0.0.1", "port": extra[0].port,
                       "model_name": "sim-model"}  # fmt: skip
                async with httpx.AsyncClient(headers=ADMIN, timeout=30) as c:
                    r = await c.post(reps[1][0] + "/admin/instances", json=new)
                    assert r.status_code == 201
                    await wait_until(
                        lambda: all(gw.manager.fleet.get("extra") is not None for gw in gws),
                        "extra registered on every replica",
                    )
                    await wait_until(
                        lambda: all(gw.manager.fleet.states["extra"].healthy for gw in gws),
                        "extra healthy on every replica",
                    )
                    answers = [await c.post(reps[0][0] + "/v1/completions", json=BODY)
                               for _ in range(3)]  # fmt: skip
                    assert "extra" in {a.headers["x-sage-instance"] for a in answers}
                    r = await c.delete(reps[2][0] + "/admin/instances/extra")
                    assert r.status_code == 200
                    await wait_until(
                        lambda: all(gw.manager.fleet.get("extra") is None for gw in gws),
                        "extra removed from every replica",
                    )
            # Three gateways and their simulators share this test's one event loop: on a busy
            # machine a Redis read can pass its 0.5 s timeout and a replica reconnects (its
            # resync is tested below); what /health must say is that it is connected again.
            await wait_until(lambda: connected(gws[1]), "replica 1 connected to Redis")
            health = (await httpx.AsyncClient().get(reps[1][0] + "/health")).json()
            assert health["shared_state"]["connected"] is True
            assert set(health["shared_state"]["peers"]) == {"r0", "r2"}


async def test_redis_restart_no_5xx_and_resync(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        async with three_replicas(redis, time_scale=0.05) as (reps, st):
            gws = [gw for _, gw in reps]
            clients = [
                await st.enter_async_context(httpx.AsyncClient(base_url=u, timeout=30))
                for u, _ in reps
            ]
            async with httpx.AsyncClient(base_url=reps[0][0], headers=ADMIN, timeout=30) as a:
                await a.put("/admin/policy", json={"name": "priority"})
            statuses: list[int] = []
            stop = asyncio.Event()

            async def drive(c: httpx.AsyncClient) -> None:
                while not stop.is_set():
                    statuses.append((await c.post("/v1/completions", json=BODY)).status_code)

            drivers = [asyncio.create_task(drive(c)) for c in clients]
            await wait_until(lambda: len(statuses) >= 10, "traffic before the restart")
            redis.stop()
            await wait_until(
                lambda: not any(connected(gw) for gw in gws), "replicas notice the loss"
            )
            during = len(statuses)
            await wait_until(lambda: len(statuses) >= during + 10, "traffic while Redis is down")
            health = (await clients[0].get("/health")).json()
            assert health["status"] == "ok" and health["shared_state"]["connected"] is False
            metrics = (await clients[0].get("/metrics")).text
            assert "sage_cp_shared_state_connected 0" in metrics
            redis.start()  # empty: a Redis restarted without its data
            await wait_until(
                lambda: all(connected(gw) and gw.share is not None and gw.share.status.resyncs >= 1
                            for gw in gws),
                "every replica resynchronised",
            )  # fmt: skip
            # Resynchronised: peers hear each other again, the admin record is back, and a
            # change made now still reaches everyone.
            await wait_until(
                lambda: all(len(gw.share.peers.by_replica) == 2 for gw in gws if gw.share),
                "every replica hears both peers again",
            )
            async with httpx.AsyncClient(base_url=reps[1][0], headers=ADMIN, timeout=30) as a:
                await a.put("/admin/policy", json={"name": "fifo"})
            await wait_until(
                lambda: all(gw.manager.policy_name == "fifo" for gw in gws), "fifo everywhere"
            )
            stop.set()
            await asyncio.gather(*drivers)
            assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
            assert "sage_cp_shared_state_connected 1" in (await clients[0].get("/metrics")).text


async def test_restarted_replica_starts_from_shared_state(tmp_path: Path) -> None:
    prompt = "shared system prompt " * 80  # long: many prefix chunks
    with RedisServer(tmp_path) as redis:
        async with SimFleet(gen(2, time_scale=0.3)) as fleet:
            async with replica(fleet, redis.url, "r0") as (url0, gw0):
                async with httpx.AsyncClient(base_url=url0, headers=ADMIN, timeout=30) as c0:
                    await c0.put("/admin/router", json={"name": "prefix_aware"})
                    first = await c0.post("/v1/completions", json={**BODY, "prompt": prompt})
                    home = first.headers["x-sage-instance"]
                    slow = {**BODY, "max_tokens": 80}
                    running = [
                        asyncio.create_task(c0.post("/v1/completions", json=slow)) for _ in range(3)
                    ]
                    await wait_until(
                        lambda: gw0.manager.fleet.total_in_flight() == 3, "3 in flight"
                    )
                    await wait_until(published_in_flight(gw0, 3), "r0 published its bookings")
                    # A replica that starts now routes with r0's router choice, load and
                    # prefixes before it has served anything.
                    async with replica(fleet, redis.url, "r1") as (url1, gw1):
                        m1 = gw1.manager
                        assert m1.routing_strategy == "prefix_aware"
                        assert sum(s.peer_in_flight for s in m1.fleet) == 3
                        item = _queued(prompt, m1)
                        states = list(m1.fleet)
                        cached = m1.cache_view.cached_tokens(item, states)
                        by_id = dict(zip([s.instance_id for s in states], cached, strict=True))
                        assert by_id[home] > 0 and by_id[home] > min(by_id.values())
                        async with httpx.AsyncClient(base_url=url1, timeout=30) as c1:
                            again = await c1.post(
                                "/v1/completions", json={**BODY, "prompt": prompt}
                            )
                        assert again.headers["x-sage-instance"] == home
                    await asyncio.gather(*running)


def _queued(prompt: str, manager: Any) -> Any:
    from sage_cp_plugin.policies.base import make_item
    from sage_cp_plugin.types import RequestMetadata

    req = RequestMetadata(request_id="probe", prompt=prompt, model_name="sim-model", max_tokens=3)
    return make_item(req, now=0.0, seq=0)


async def connected_replicas(
    st: contextlib.AsyncExitStack, fleet: SimFleet, redis_url: str, n: int, **config: Any
) -> list[tuple[str, Gateway]]:
    """`n` replicas r0.. with `config`, each connected to Redis."""
    reps = [
        await st.enter_async_context(replica(fleet, redis_url, f"r{i}", **config)) for i in range(n)
    ]
    for _, gw in reps:
        await wait_until(lambda gw=gw: connected(gw), "replica connected")
    return reps


def heard_usage(gw: Gateway, tenant: str) -> int:
    """Requests of `tenant` this replica counts in the window: its own and its peers'."""
    limiter = gw.manager.admission.rate_limiter
    assert limiter is not None
    return int(limiter.usage(tenant, gw.manager.now())[0])


async def test_rate_limits_hold_across_replicas_and_for_a_new_one(tmp_path: Path) -> None:
    """One tenant limit over three replicas: every replica hears the others' usage through
    Redis and refuses once the tenant's total is reached; a replica started later refuses
    at once (it read the usage from Redis), and another tenant is not affected."""
    limits = {"default": {"requests_per_minute": 6}}
    body = {**BODY, "user": "acme"}
    with RedisServer(tmp_path) as redis:
        async with SimFleet(gen(2, time_scale=0.01)) as fleet, contextlib.AsyncExitStack() as st:
            reps = await connected_replicas(st, fleet, redis.url, 3, rate_limits=limits)
            codes = []
            async with httpx.AsyncClient(timeout=30) as c:
                for k in range(12):
                    url, _ = reps[k % 3]
                    r = await c.post(f"{url}/v1/completions", json=body)
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        ok = codes.count(200)
                        for _, gw in reps:  # every replica has heard it before the next one
                            await wait_until(
                                lambda gw=gw, ok=ok: heard_usage(gw, "acme") == ok,
                                "usage heard by every replica",
                            )
                assert codes == [200] * 6 + [429] * 6, codes
                late_url, late = await st.enter_async_context(
                    replica(fleet, redis.url, "r-late", rate_limits=limits)
                )
                await wait_until(lambda: connected(late), "late replica connected")
                assert heard_usage(late, "acme") == 6
                assert (await c.post(f"{late_url}/v1/completions", json=body)).status_code == 429
                other = {**BODY, "user": "other"}
                assert (await c.post(f"{late_url}/v1/completions", json=other)).status_code == 200


async def test_quota_usage_reaches_every_replica_and_a_later_one(tmp_path: Path) -> None:
    """A tenant's quota spent through one replica is spent for all, through Redis; a replica
    started afterwards reads it from Redis (kept there for the period)."""
    quotas = {"period": "day", "default": {"tokens": 4}}  # one request uses more (3 answered)
    body = {**BODY, "user": "acme"}
    with RedisServer(tmp_path) as redis:
        async with SimFleet(gen(2, time_scale=0.01)) as fleet, contextlib.AsyncExitStack() as st:
            reps = await connected_replicas(st, fleet, redis.url, 2, quotas=quotas)
            async with httpx.AsyncClient(timeout=30) as c:
                assert (await c.post(f"{reps[0][0]}/v1/completions", json=body)).status_code == 200

                def spent(gw: Gateway) -> float:
                    ledger = gw.manager.admission.quotas
                    assert ledger is not None
                    return ledger.used("acme")[0]

                assert spent(reps[0][1]) >= 4
                await wait_until(
                    lambda: spent(reps[1][1]) == spent(reps[0][1]), "replica 1 heard the spend"
                )
                r = await c.post(f"{reps[1][0]}/v1/completions", json=body)
                assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
                late_url, late = await st.enter_async_context(
                    replica(fleet, redis.url, "r-late", quotas=quotas)
                )
                await wait_until(lambda: connected(late), "late replica connected")
                r = await c.post(f"{late_url}/v1/completions", json=body)
                assert r.status_code == 429
