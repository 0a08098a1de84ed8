"""The admin API (instances, drain, policy/router, queue) and the Prometheus names."""

from __future__ import annotations

import asyncio

from sage_cp_plugin.sim import SimFleet
from tests.helpers import wait_until
from tests.test_gateway_support import gateway_over_sim, gen

ADMIN = {"authorization": "Bearer adm"}
BODY = {"model": "sim-model", "prompt": "hello", "max_tokens": 3}


async def test_admin_instances_add_drain_remove() -> None:
    async with gateway_over_sim(gen(1, time_scale=0.3), settings={"admin_key": "adm"}) as h:
        async with h.client(headers=ADMIN) as c, SimFleet(gen(1, time_scale=0.3)) as extra:
            listed = (await c.get("/admin/instances")).json()["instances"]
            assert [i["instance_id"] for i in listed] == ["sim-0"]
            assert listed[0]["healthy"] and listed[0]["capacity"] > 0

            new = {"instance_id": "extra", "host": "127.0.0.1", "port": extra[0].port,
                   "model_name": "sim-model"}  # fmt: skip
            resp = await c.post("/admin/instances", json=new)
            assert resp.status_code == 201 and resp.json()["url"].endswith(str(extra[0].port))
            assert (await c.post("/admin/instances", json=new)).status_code == 409
            bad = await c.post("/admin/instances", json={"instance_id": "x", "port": "many"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "port"

            # A request in flight on `extra`, then drain it.
            await c.put("/admin/router", json={"name": "round_robin"})
            slow = {**BODY, "max_tokens": 40}
            running = [asyncio.create_task(c.post("/v1/completions", json=slow)) for _ in range(4)]
            extra_state = h.manager.fleet.states["extra"]
            await wait_until(lambda: extra_state.in_flight > 0, "a request running on extra")
            resp = await c.post("/admin/instances/extra/drain")
            assert resp.status_code == 202 and resp.json()["draining"]
            # New requests avoid it while its in-flight ones finish.
            fresh = [await c.post("/v1/completions", json=BODY) for _ in range(3)]
            assert {r.headers["x-sage-instance"] for r in fresh} == {"sim-0"}
            done = await asyncio.gather(*running)
            assert all(r.status_code == 200 for r in done)  # in-flight ones finished
            states = h.manager.fleet.states
            await wait_until(lambda: "extra" not in states, "extra removed once idle")
            assert (await c.get("/admin/instances/extra")).status_code == 404

            # Immediate removal.
            await c.post("/admin/instances", json={**new, "instance_id": "extra2"})
            resp = await c.delete("/admin/instances/extra2")
            assert resp.status_code == 200 and "extra2" not in h.manager.fleet.states
            assert (await c.delete("/admin/instances/nope")).status_code == 404


async def test_admin_policy_router_queue_and_status() -> None:
    async with (
        gateway_over_sim(
            gen(1, time_scale=0.3),
            settings={"admin_key": "adm"},
            instance_fields={"max_concurrent_requests": 1},
        ) as h,
        h.client(headers=ADMIN) as c,
    ):
        resp = await c.put("/admin/policy", json={"name": "priority"})
        assert resp.status_code == 200 and resp.json()["scheduling_policy"] == "priority"
        assert h.manager.policy_name == "priority"
        resp = await c.put("/admin/policy", json={"name": "no-such-policy"})
        assert resp.status_code == 400 and "available" in resp.json()["error"]["message"]
        resp = await c.put("/admin/router", json={"name": "affinity"})
        assert resp.status_code == 200 and resp.json()["routing_strategy"] == "affinity"
        assert (await c.put("/admin/router", json={"nme": "x"})).status_code == 400

        slow = {**BODY, "max_tokens": 30}
        tasks = [asyncio.create_task(c.post("/v1/completions", json=slow)) for _ in range(3)]
        await wait_until(lambda: len(h.manager.queue) >= 2, "two queued requests")
        q = (await c.get("/admin/queue")).json()
        assert q["depth"] == 2 and q["running"] == 1 and len(q["items"]) == 2
        assert q["items"][0]["priority"] == "normal" and q["items"][0]["age_ms"] > 0
        status = (await c.get("/admin/status")).json()
        assert status["pending_requests"] == 2
        assert status["instances"][0]["in_flight"] == 1
        assert "p99_latency_ms" in status["metrics"]
        await asyncio.gather(*tasks)


async def test_prometheus_names_after_traffic() -> None:
    async with gateway_over_sim(gen(2)) as h, h.client() as c:
        await c.post("/v1/completions", json={**BODY, "ttft_slo_ms": 10_000})
        await c.post(
            "/v1/chat/completions",
            json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}],
                  "max_tokens": 3, "stream": True},
            headers={"x-sage-priority": "high"},
        )  # fmt: skip
        await c.post("/v1/completions", json={"model": "zzz", "prompt": "x"})
        text = (await c.get("/metrics")).text
        for name in (
            "sage_cp_requests_total",
            "sage_cp_queue_time_seconds_bucket",
            "sage_cp_time_to_first_token_seconds_bucket",
            "sage_cp_inter_token_latency_seconds_bucket",
            "sage_cp_e2e_request_latency_seconds_bucket",
            "sage_cp_queue_depth",
            "sage_cp_requests_running",
            "sage_cp_instance_healthy",
            "sage_cp_instance_circuit_open",
            "sage_cp_instance_in_flight",
            "sage_cp_instance_scraped_running",
            "sage_cp_instance_scraped_waiting",
            "sage_cp_instance_scraped_kv_cache_usage",
            "sage_cp_slo_attainment_ratio",
            "sage_cp_retries_total",
            "sage_cp_failovers_total",
        ):
            assert f"\n{name}" in text, name
        assert (
            'sage_cp_requests_total{endpoint="/v1/chat/completions",model="sim-model",priority="high",status="200"} 1.0'
            in text
        )
        assert 'model="unknown"' in text and "zzz" not in text  # no label per bad name
        assert 'sage_cp_slo_attainment_ratio{priority="all"} 1.0' in text
        assert (
            'sage_cp_instance_healthy{instance="sim-0",model="sim-model",type="general"} 1.0'
            in text
        )
