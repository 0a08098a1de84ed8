"""One run per `x-request-id` across replicas sharing a REAL redis-server (started here), in
front of one simulated fleet; runs are counted at the simulated engines.

- the same id sent to two replicas at once runs once, and both clients get its answer
  (non-streamed and streamed);
- the first client leaving while a resend (handed over from another replica) waits on its
  run: the run goes on; a client leaving alone cancels it, and its resend runs it again;
- the owner killed (SIGKILL) while a second replica's handover waits on it: that replica
  takes the claim over and runs it once more, and a resend to a third replica joins that run.

A batch job over three replicas with one killed mid-job: tests/test_fleetshare_batch.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from sage_cp_plugin.config import sim_instances
from sage_cp_plugin.sim import SimFleet
from sage_cp_plugin.sim.fleet import SimFleetThread
from tests.helpers import wait_until
from tests.redis_server import RedisServer
from tests.test_fleetshare_redis import replica
from tests.test_gateway_support import GatewayProcess, gen, start_gateway_process


def count_runs(fleet: SimFleet) -> Counter[str]:
    """Prompts as the simulated engines receive them (one count per run on an engine)."""
    runs: Counter[str] = Counter()
    for member in fleet.members:
        engine = member.sim.engine
        submit = engine.submit

        def counted(prompt: Any, *args: Any, _submit: Any = submit, **kw: Any) -> Any:
            runs[prompt if isinstance(prompt, str) else " ".join(prompt)] += 1
            return _submit(prompt, *args, **kw)

        engine.submit = counted  # type: ignore[method-assign]
    return runs


@contextlib.asynccontextmanager
async def replicas_over(fleet: SimFleet, redis: RedisServer, n: int) -> AsyncIterator[list[str]]:
    """`n` replicas (separate managers and gateways, one Redis) that hear each other's
    addresses; yields their URLs."""
    async with contextlib.AsyncExitStack() as st:
        reps = [await st.enter_async_context(replica(fleet, redis.url, f"r{i}")) for i in range(n)]
        gws = [gw for _, gw in reps]

        def all_addressed() -> bool:
            return all(
                gw.share is not None
                and all(gw.share.peers.address(f"r{j}", gw.manager.now()) for j in range(n)
                        if f"r{j}" != gw.share.replica_id)
                for gw in gws
            )  # fmt: skip

        await wait_until(all_addressed, "every replica heard every peer's address")
        yield [u for u, _ in reps]


def sse_text(raw: str) -> str:
    text = []
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            text += [c.get("text", "") for c in chunk.get("choices", [])]
    return "".join(text)


async def test_same_id_on_two_replicas_at_once_runs_once(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        async with SimFleet(gen(2, time_scale=0.3)) as fleet:
            runs = count_runs(fleet)
            async with replicas_over(fleet, redis, 3) as urls, httpx.AsyncClient(timeout=60) as c:
                for stream in (False, True):
                    prompt = f"run me once, stream={stream}"
                    body = {"model": "sim-model", "prompt": prompt, "max_tokens": 24,
                            "stream": stream}  # fmt: skip
                    headers = {"x-request-id": f"line-{stream}"}
                    a, b = await asyncio.gather(
                        c.post(urls[0] + "/v1/completions", json=body, headers=headers),
                        c.post(urls[1] + "/v1/completions", json=body, headers=headers),
                    )
                    assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
                    assert runs[prompt] == 1  # one run on the engines for both clients
                    if stream:
                        assert sse_text(a.text) == sse_text(b.text) != ""
                    else:
                        assert a.json() == b.json()  # the same answer (same completion id)
                    handed = {a.headers.get("x-sage-handed-to"), b.headers.get("x-sage-handed-to")}
                    assert handed in ({None, "r0"}, {None, "r1"})  # one ran, one handed over


async def test_the_first_client_leaving_does_not_fail_a_resend_joined_to_it(
    tmp_path: Path,
) -> None:
    """A client gives up on r0 while its resend, sent to r1, waits on r0's run: the run goes
    on for the resend (one run). A client that leaves with nobody else waiting cancels the
    run; its resend through another replica runs it again and is answered."""
    with RedisServer(tmp_path) as redis:
        async with SimFleet(gen(2, time_scale=0.5)) as fleet:
            runs = count_runs(fleet)
            async with contextlib.AsyncExitStack() as st:
                reps = [await st.enter_async_context(replica(fleet, redis.url, f"r{i}"))
                        for i in range(2)]  # fmt: skip
                (u0, g0), (u1, _g1) = reps
                await wait_until(
                    lambda: all(g.share is not None and g.share.peers.address(
                        "r1" if g is g0 else "r0", g.manager.now()) for _, g in reps),
                    "the replicas heard each other's address",
                )  # fmt: skip
                c = await st.enter_async_context(httpx.AsyncClient(timeout=60))
                body = {"model": "sim-model", "prompt": "left early", "max_tokens": 60}
                hdr = {"x-request-id": "left-1"}
                first = asyncio.create_task(c.post(u0 + "/v1/completions", json=body, headers=hdr))
                await wait_until(lambda: runs["left early"] == 1, "r0 runs it")
                resend = asyncio.create_task(c.post(u1 + "/v1/completions", json=body, headers=hdr))
                await wait_until(
                    lambda: runs["left early"] == 2 or g0._waiting.get("left-1") == 2,
                    "the resend reached r1 (handed to r0, or run there)",
                )
                first.cancel()  # the first client gives up: its connection closes
                with contextlib.suppress(asyncio.CancelledError):
                    await first
                answer = await resend
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-sage-handed-to"] == "r0"
                assert runs["left early"] == 1

                # Nobody else waiting: the run is cancelled; a resend elsewhere runs it again.
                body2 = {**body, "prompt": "left alone"}
                hdr2 = {"x-request-id": "left-2"}
                first = asyncio.create_task(
                    c.post(u0 + "/v1/completions", json=body2, headers=hdr2)
                )
                await wait_until(lambda: runs["left alone"] == 1, "r0 runs it")
                first.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await first
                await wait_until(
                    lambda: g0.manager.results.get("left-2") is not None, "r0 cancelled it"
                )
                again = await c.post(u1 + "/v1/completions", json=body2, headers=hdr2)
                assert again.status_code == 200, again.text
                assert runs["left alone"] == 2


async def test_a_resend_after_the_owner_died_runs_once_more(tmp_path: Path) -> None:
    """r0 runs the id; a resend to r1 is handed to r0; r0 is killed mid-run: r1 takes the
    claim and runs it (the second run), and r0's client, resending to r2, joins r1's run."""
    with RedisServer(tmp_path) as redis, SimFleetThread(gen(2, time_scale=1.0)) as sims:
        runs = count_runs(sims.fleet)
        cfg = tmp_path / "fleet.yaml"
        instances = [i.model_dump(mode="json") for i in sim_instances(sims.fleet.members)]
        cfg.write_text(json.dumps({"scheduling_policy": "fifo", "instances": instances}))
        procs: list[GatewayProcess] = []
        try:
            for i in range(3):
                procs.append(await asyncio.to_thread(
                    start_gateway_process, "--config", str(cfg), "--redis-url", redis.url,
                    "--replica-id", f"r{i}",
                ))  # fmt: skip
            urls = [p.url for p in procs]
            prompt = "a long answer the owner will not finish"
            body = {"model": "sim-model", "prompt": prompt, "max_tokens": 400}
            headers = {"x-request-id": "line-42"}
            async with httpx.AsyncClient(timeout=120) as c:
                await wait_until(lambda: _peers_heard(c, urls), "replicas hear each other")
                first = asyncio.create_task(
                    c.post(urls[0] + "/v1/completions", json=body, headers=headers)
                )
                await wait_until(lambda: runs[prompt] == 1, "r0 runs it")
                resend = asyncio.create_task(
                    c.post(urls[1] + "/v1/completions", json=body, headers=headers)
                )

                async def r1_has_it() -> bool:  # handed to r0, or (without claims) run there
                    return runs[prompt] == 2 or await _claims(c, urls[1], "handed_over", 1)

                await wait_until(r1_has_it, "the resend reached r1")
                procs[0].proc.send_signal(signal.SIGKILL)
                procs[0].proc.wait(timeout=30)
                try:
                    await first
                    raise AssertionError("r0 answered although it was killed")
                except httpx.TransportError:
                    pass  # r0's client resends, to the next replica
                again = await c.post(urls[2] + "/v1/completions", json=body, headers=headers)
                handed = await resend
                assert handed.status_code == 200, handed.text
                assert again.status_code == 200, again.text
                assert again.json() == handed.json()  # the one run's answer
                assert again.headers["x-sage-handed-to"] == "r1"
                assert runs[prompt] == 2  # r0's lost run and r1's, none for r2
                assert await _claims(c, urls[1], "taken_over", 1)
        finally:
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.terminate()
                    p.proc.wait(timeout=30)


async def _peers_heard(c: httpx.AsyncClient, urls: list[str]) -> bool:
    for u in urls:
        shared = (await c.get(u + "/health")).json().get("shared_state") or {}
        if len(shared.get("peers", [])) != len(urls) - 1:
            return False
    return True


async def _claims(c: httpx.AsyncClient, url: str, outcome: str, n: int) -> bool:
    text = (await c.get(url + "/metrics")).text
    return f'sage_cp_request_claims_total{{outcome="{outcome}"}} {n}' in text
