"""Three replicas of the gateway behind one REAL redis-server (started here) place the
requests a client spreads over them evenly on one simulated fleet: each replica knows its
place among its peers, so requests arriving at all three at once go to different instances
instead of all to the first one (`routing.rotation`).

Each replica is a separate `ControlPlaneManager` + gateway (separate state, as three
processes would have; they share only Redis); other machines cannot exist here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from sage_cp_plugin.entrypoints.gateway import Gateway, GatewaySettings, serving

from sage_cp_plugin.config import ControlPlaneConfig, HealthSettings, sim_instances
from sage_cp_plugin.sim import SimFleet
from tests.helpers import wait_until
from tests.redis_server import RedisServer
from tests.test_gateway_support import gen

INSTANCES = 4


@contextlib.asynccontextmanager
async def replicas(
    redis: RedisServer, router: str
) -> AsyncIterator[list[tuple[httpx.AsyncClient, Gateway]]]:
    async with (
        SimFleet(gen(INSTANCES, time_scale=0.05)) as fleet,
        contextlib.AsyncExitStack() as st,
    ):
        out = []
        for i in range(3):
            cfg = ControlPlaneConfig(
                instances=sim_instances(fleet.members), scheduling_policy="fifo",
                # Default probing (5 s, two misses): a probe that times out on a loaded
                # machine must not take an instance out of one replica's candidates only.
                routing_strategy=router, health=HealthSettings(),
            )  # fmt: skip
            manager = cfg.build_manager()
            await manager.start()
            st.push_async_callback(manager.stop)
            settings = GatewaySettings(port=0, redis_url=redis.url, replica_id=f"r{i}")
            url, gw = await st.enter_async_context(serving(manager, settings))
            client = await st.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            out.append((client, gw))
        gws = [gw for _, gw in out]
        await wait_until(
            lambda: sorted(gw.manager.fleet.replica for gw in gws) == [(0, 3), (1, 3), (2, 3)],
            "each replica knows its place among three",
        )
        await wait_until(
            lambda: all(s.healthy for gw in gws for s in gw.manager.fleet), "fleet healthy"
        )
        yield out


def _idle(gws: list[Gateway]) -> bool:
    """Every replica sees every instance idle: nothing of its own or its peers' in flight,
    and no last scrape showing work (an older scrape would read as load from elsewhere)."""
    return all(
        s.routable
        and s.in_flight == 0
        and s.peer_in_flight == 0
        and (not s.scraped.fresh or s.scraped.running + s.scraped.waiting == 0)
        for gw in gws
        for s in gw.manager.fleet
    )


async def _bursts(reps: list[tuple[httpx.AsyncClient, Gateway]], n: int) -> list[list[str]]:
    """`n` bursts of one request to each replica at once (a client spreading in turn), each
    from an idle fleet; the instances each burst went to."""
    out = []
    for b in range(n):
        await wait_until(lambda: _idle([gw for _, gw in reps]), "an idle fleet in every view")
        answers = await asyncio.gather(
            *(
                c.post(
                    "/v1/completions",
                    # Distinct prompts: no cached prefix pulls a request anywhere.
                    json={
                        "model": "sim-model",
                        "prompt": f"burst {b} replica {i}",
                        "max_tokens": 2,
                    },
                )
                for i, (c, _) in enumerate(reps)
            )
        )
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        out.append([a.headers["x-sage-instance"] for a in answers])
    return out


async def test_round_robin_replicas_move_one_cursor(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        async with replicas(redis, "round_robin") as reps:
            bursts = await _bursts(reps, 4)
    # In each burst the three replicas picked three different instances (in lockstep they
    # would all have picked the same one), and over the 12 requests each instance got 3.
    assert all(len(set(b)) == 3 for b in bursts), bursts
    assert sorted(Counter(i for b in bursts for i in b).values()) == [3] * INSTANCES, bursts


async def test_default_router_replicas_spread_a_burst(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        async with replicas(redis, "prefix_aware") as reps:
            bursts = await _bursts(reps, 4)
    # Equal idle instances: whether or not a replica heard its peers' bookings in time,
    # the three requests of a burst land on three different instances.
    assert all(len(set(b)) == 3 for b in bursts), bursts
    counts = Counter(i for b in bursts for i in b)
    assert len(counts) == INSTANCES and max(counts.values()) <= 4, bursts
