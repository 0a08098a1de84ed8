"""Faults at the gateway: clients that vanish, a fleet that dies and returns, overload."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import wait_until
from tests.test_gateway_support import gateway_over_sim, gen

BODY = {"model": "sim-model", "prompt": "tell me a long story", "max_tokens": 400}


async def test_client_disconnect_mid_stream_aborts_the_upstream_sequence() -> None:
    async with gateway_over_sim(gen(1, time_scale=0.5)) as h:
        async with (
            h.client() as c,
            c.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as resp,
        ):
            assert resp.status_code == 200
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data:")
                if seen == 3:
                    break  # leaving the block closes the connection mid-stream

        async def aborted() -> bool:
            st = await h.sim_state(0)
            return bool(st["counters"]["aborted"] == 1 and st["running"] == 0)

        await wait_until(aborted, "the upstream abort")
        assert h.manager.dispatcher.in_flight_count() == 0
        metrics = (await httpx.AsyncClient().get(f"{h.url}/metrics")).text
        assert 'status="499"' in metrics


async def test_client_disconnect_while_waiting_cancels_upstream() -> None:
    async with gateway_over_sim(gen(1, time_scale=0.5)) as h:
        async with h.client() as c:
            task = asyncio.create_task(c.post("/v1/chat/completions", json={
                "model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 400,
            }))  # fmt: skip

            async def running() -> bool:
                return int((await h.sim_state(0))["running"]) == 1

            await wait_until(running, "the request running upstream")
            task.cancel()  # the client gives up: its connection closes
            await asyncio.gather(task, return_exceptions=True)

        async def aborted() -> bool:
            st = await h.sim_state(0)
            return bool(st["counters"]["aborted"] == 1 and st["running"] == 0)

        await wait_until(aborted, "the upstream abort")


async def test_every_instance_down_gives_clear_503_then_recovers() -> None:
    async with gateway_over_sim(gen(2)) as h, h.client() as c:
        small = {**BODY, "max_tokens": 2}
        assert (await c.post("/v1/completions", json=small)).status_code == 200
        await h.fleet.kill(0)
        await h.fleet.kill(1)
        resp = await c.post("/v1/completions", json=small)
        assert resp.status_code == 503, resp.text
        msg = resp.json()["error"]["message"]
        assert "sim-0" in msg and "sim-1" in msg  # says which instances and why

        async def health_is(code: int) -> bool:
            return (await c.get("/health")).status_code == code

        await wait_until(lambda: health_is(503), "health 503")
        resp = await c.post("/v1/completions", json=small)
        assert resp.status_code == 503
        assert "no healthy instance" in resp.json()["error"]["message"]

        await h.fleet.restart(1)
        await wait_until(lambda: health_is(200), "health 200")
        resp = await c.post("/v1/completions", json=small)
        assert resp.status_code == 200 and resp.headers["x-sage-instance"] == "sim-1"


async def test_overload_sheds_with_429_beyond_the_bound_and_loses_nothing() -> None:
    """More requests than slots + queue: the excess is shed at once with 429, the rest complete.

    The instance holds its requests (simulator hang fault) until every slot and queue place
    is taken, so the overload is certain on any machine, however slow.
    """
    import resource

    cap, pending = 4, 8
    async with gateway_over_sim(
        gen(1),
        max_pending_requests=pending,
        instance_fields={"max_concurrent_requests": cap},
        settings={"result_retention": 64},
    ) as h:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with h.client(limits=limits) as c, httpx.AsyncClient(base_url=h.fleet.urls[0]) as sim:
            body = {"model": "sim-model", "prompt": "go", "max_tokens": 8}
            warm = await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(cap)))
            assert all(r.status_code == 200 for r in warm)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            (await sim.post("/sim/faults", json={"hang": True})).raise_for_status()
            held = [
                asyncio.create_task(c.post("/v1/completions", json=body))
                for _ in range(cap + pending)
            ]
            status = h.manager.get_status
            await wait_until(
                lambda: (
                    status()["running_requests"] == cap and status()["pending_requests"] == pending
                ),
                "every slot and queue place taken",
            )
            shed_now = await asyncio.gather(
                *(c.post("/v1/completions", json=body) for _ in range(3 * (cap + pending)))
            )
            assert len(h.manager.queue) == pending  # the bound held
            (await sim.post("/sim/faults", json={"hang": False})).raise_for_status()
            results = [*await asyncio.gather(*held), *shed_now]

        codes = [r.status_code for r in results]
        ok = [r for r in results if r.status_code == 200]
        shed = [r for r in results if r.status_code == 429]
        assert set(codes) <= {200, 429}, codes  # nothing else: no 5xx, no hang
        assert shed and ok, codes
        assert all(int(r.headers["retry-after"]) >= 1 for r in shed)
        assert all(r.json()["error"]["type"] == "rate_limit_error" for r in shed)
        assert all(len(r.json()["choices"][0]["text"].split()) == 8 for r in ok)
        m = h.manager.get_metrics()
        assert m.failed_requests == 0  # every accepted request completed
        assert len(ok) == cap + pending and len(shed) == 3 * (cap + pending)
        assert m.completed_requests == len(ok) + cap
        assert len(h.manager.queue) == 0 and h.manager.dispatcher.in_flight_count() == 0
        assert len(h.manager.results) <= 64  # finished results do not pile up
        growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        assert growth_mb < 100, growth_mb
