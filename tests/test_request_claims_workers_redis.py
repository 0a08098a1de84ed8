"""One run per `x-request-id` across replicas when a replica is `sage-cp serve --workers N`
(a scheduling process and forwarding workers) sharing a REAL redis-server (started here)
with another replica, in front of one simulated fleet; runs are counted at the engines.

- a request the workers' replica runs is handed to it when resent to the other replica (it
  advertises the port its supervisor listens on);
- a request the other replica runs is handed over when resent through a worker (the worker
  claims the id through the scheduling process and relays the owner's answer, streamed).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from sage_cp_plugin.config import sim_instances
from sage_cp_plugin.fleetshare.peers import ADDRESS_FIELD
from sage_cp_plugin.fleetshare.redis_store import RedisFleetStateStore
from sage_cp_plugin.sim.fleet import SimFleetThread
from tests.helpers import wait_until
from tests.redis_server import RedisServer
from tests.test_gateway_support import GatewayProcess, gen, start_gateway_process
from tests.test_request_claims_redis import _claims, _peers_heard, count_runs, sse_text


async def _addresses_shared(redis_url: str, replicas: list[str]) -> bool:
    """Every replica's load record carries its address (its message with it went first)."""
    store = RedisFleetStateStore(redis_url)
    try:
        loads = await store.get_loads()
    finally:
        await store.aclose()
    return all(loads.get(r, {}).get(ADDRESS_FIELD) for r in replicas)


async def test_claims_reach_across_a_workers_replica(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis, SimFleetThread(gen(2, time_scale=1.0)) as sims:
        runs = count_runs(sims.fleet)
        cfg = tmp_path / "fleet.yaml"
        instances = [i.model_dump(mode="json") for i in sim_instances(sims.fleet.members)]
        cfg.write_text(json.dumps({"scheduling_policy": "fifo", "instances": instances}))
        common = ("--config", str(cfg), "--redis-url", redis.url)
        procs: list[GatewayProcess] = []
        try:
            procs.append(await asyncio.to_thread(
                start_gateway_process, *common, "--workers", "2", "--replica-id", "wa",
                timeout=120,
            ))  # fmt: skip
            procs.append(
                await asyncio.to_thread(start_gateway_process, *common, "--replica-id", "sb")
            )
            wa, sb = (p.url for p in procs)
            async with httpx.AsyncClient(timeout=120) as c:
                await wait_until(lambda: _peers_heard(c, [wa, sb]), "replicas hear each other")
                await wait_until(
                    lambda: _addresses_shared(redis.url, ["wa", "sb"]), "addresses shared"
                )

                # Run by the workers' replica; the resend to the other one is handed to it.
                body = {"model": "sim-model", "prompt": "run by the workers", "max_tokens": 200}
                hdr = {"x-request-id": "line-1"}
                first = asyncio.create_task(c.post(wa + "/v1/completions", json=body, headers=hdr))
                await wait_until(lambda: runs["run by the workers"] == 1, "wa runs it")
                resend = await c.post(sb + "/v1/completions", json=body, headers=hdr)
                answer = await first
                assert (answer.status_code, resend.status_code) == (200, 200), resend.text
                assert resend.headers["x-sage-handed-to"] == "wa"
                assert resend.json() == answer.json()
                assert runs["run by the workers"] == 1

                # Run by the other replica; the resend through a worker (streamed) is handed
                # over and its answer relayed by the worker.
                body = {"model": "sim-model", "prompt": "run by the other", "max_tokens": 200}
                hdr = {"x-request-id": "line-2"}
                first = asyncio.create_task(c.post(sb + "/v1/completions", json=body, headers=hdr))
                await wait_until(lambda: runs["run by the other"] == 1, "sb runs it")
                resend = await c.post(
                    wa + "/v1/completions", json={**body, "stream": True}, headers=hdr
                )
                answer = await first
                assert (answer.status_code, resend.status_code) == (200, 200), resend.text
                assert resend.headers["x-sage-handed-to"] == "sb"
                assert sse_text(resend.text) == answer.json()["choices"][0]["text"] != ""
                assert runs["run by the other"] == 1
                assert await _claims(c, wa, "handed_over", 1)
        finally:
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.terminate()
                    p.proc.wait(timeout=60)
