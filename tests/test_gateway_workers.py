"""`sage-cp serve --workers N` as real processes over loopback, in front of the simulated
fleet: one control plane (one queue, one view, admin changes land once) behind N workers.

Every check waits on a condition (a process gone, a count reached), never on a sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks.procfs import alive, children_of
from sage_cp_plugin.sim import SimFleet
from sage_cp_plugin.sim.config import FaultConfig
from tests.helpers import wait_until, wait_until_sync
from tests.test_gateway_support import (
    GatewayProcess,
    gen,
    start_gateway_process,
    stream_through_sigterm,
    write_config,
)

ADMIN = {"authorization": "Bearer adm"}
BODY = {"model": "sim-model", "prompt": "hello", "max_tokens": 4}


def role_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"sage_cp_plugin.entrypoints.gateway.workers.child") + 1].decode()


def start_workers(tmp_path: Path, n: int, *extra: str, time_scale: float = 0.05) -> GatewayProcess:
    cfg = write_config(tmp_path / "fleet.yaml", time_scale=time_scale)
    return start_gateway_process(
        "--config", str(cfg), "--workers", str(n), *extra, timeout=120,
        env={"SAGE_CP_ADMIN_KEY": "adm"},
    )  # fmt: skip


async def test_one_rate_limit_over_every_worker(tmp_path: Path) -> None:
    """Requests are admitted by the one scheduling process: a tenant's limit is one limit,
    whichever worker its connections land on."""
    cfg = write_config(tmp_path / "fleet.yaml", time_scale=0.05)
    with cfg.open("a") as f:
        f.write("rate_limits:\n  default: {requests_per_minute: 4}\n")
    gp = start_gateway_process("--config", str(cfg), "--workers", "2", timeout=120)
    children = children_of(gp.proc.pid)
    one = httpx.Limits(max_connections=1)
    body = {**BODY, "user": "acme"}
    try:
        async with (
            httpx.AsyncClient(base_url=gp.url, timeout=60, limits=one) as a,
            httpx.AsyncClient(base_url=gp.url, timeout=60, limits=one) as b,
        ):
            answers = [await c.post("/v1/completions", json=body) for c in (a, b) * 4]
            assert len({r.headers.get("x-sage-worker") for r in answers[:2]}) == 2
            assert [r.status_code for r in answers] == [200] * 4 + [429] * 4
            assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in answers[4:])
            assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in answers[4:])
    finally:
        stop(gp, children)


def stop(gp: GatewayProcess, children: list[int]) -> None:
    if gp.proc.poll() is None:
        gp.proc.send_signal(signal.SIGTERM)
        try:
            gp.proc.wait(60)
        except subprocess.TimeoutExpired:
            gp.proc.kill()
            gp.proc.wait()
    for pid in children:  # never leave a process behind, even when the test failed
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_every_request_answered_once_spread_evenly_streaming_passes(tmp_path: Path) -> None:
    gp = start_workers(tmp_path, 2)
    children = children_of(gp.proc.pid)
    try:
        assert sorted(role_of(p) for p in children) == ["scheduler", "worker", "worker"]

        async def one(i: int) -> httpx.Response:
            # A connection per request: the supervisor hands connections out in turn.
            async with httpx.AsyncClient(base_url=gp.url, timeout=60) as c:
                return await c.post(
                    "/v1/completions", json=BODY, headers={"x-request-id": f"once-{i}"}
                )

        n = 40
        answers = await asyncio.gather(*(one(i) for i in range(n)))
        assert [r.status_code for r in answers] == [200] * n
        assert sorted(r.headers["x-sage-request-id"] for r in answers) == sorted(
            f"once-{i}" for i in range(n)
        )
        by_worker = [sum(r.headers["x-sage-worker"] == w for r in answers) for w in "01"]
        assert abs(by_worker[0] - by_worker[1]) <= 1, by_worker  # connections spread evenly

        async with httpx.AsyncClient(base_url=gp.url, timeout=60) as c:
            # A resend of a finished id gets its result; nothing runs twice.
            again = await c.post("/v1/completions", json=BODY, headers={"x-request-id": "once-7"})
            assert again.status_code == 200
            assert again.json() == answers[7].json()
            metrics = (await c.get("/v1/sage/metrics")).json()
            assert metrics["completed_requests"] == n  # the one control plane ran each once

            # Streaming passes through, chunk by chunk, with usage when asked.
            body = {
                **BODY,
                "max_tokens": 12,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                events = [line async for line in r.aiter_lines() if line.startswith("data:")]
            assert events[-1] == "data: [DONE]"
            chunks = [httpx.Response(200, content=e[5:]).json() for e in events[:-1]]
            text_chunks = [ch for ch in chunks if ch["choices"]]
            assert len(text_chunks) == 12
            assert chunks[-1]["usage"]["completion_tokens"] == 12

            # /health and /metrics are the whole control plane's, with the workers named.
            health = (await c.get("/health")).json()
            assert health["workers"]["alive"] == 2 and health["workers"]["restarts"] == 0
            assert sum(health["workers"]["requests_by_worker"].values()) == n + 2
            prom = (await c.get("/metrics")).text
            line = next(
                ln for ln in prom.splitlines()
                if ln.startswith('sage_cp_requests_total{endpoint="/v1/completions"')
                and 'status="200"' in ln
            )  # fmt: skip
            assert float(line.split()[-1]) == n + 2
            assert "sage_cp_workers_alive 2" in prom

            # A bad request is refused by the worker with the usual message.
            bad = await c.post("/v1/completions", json={"model": "sim-model"})
            assert bad.status_code == 400 and "prompt" in bad.json()["error"]["message"]
    finally:
        stop(gp, children)


async def test_admin_changes_through_one_worker_are_seen_by_all(tmp_path: Path) -> None:
    gp = start_workers(tmp_path, 2)
    children = children_of(gp.proc.pid)
    one = httpx.Limits(max_connections=1)
    try:
        async with (
            httpx.AsyncClient(base_url=gp.url, timeout=60, headers=ADMIN, limits=one) as a,
            httpx.AsyncClient(base_url=gp.url, timeout=60, headers=ADMIN, limits=one) as b,
            SimFleet(gen(1, time_scale=0.05)) as extra,
        ):
            wa = (await a.post("/v1/completions", json=BODY)).headers["x-sage-worker"]
            wb = (await b.post("/v1/completions", json=BODY)).headers["x-sage-worker"]
            assert wa != wb  # two connections, two workers

            assert (await a.put("/admin/policy", json={"name": "priority"})).status_code == 200
            assert (await b.get("/admin/policy")).json()["scheduling_policy"] == "priority"
            assert (await b.put("/admin/router", json={"name": "round_robin"})).status_code == 200
            assert (await a.get("/admin/router")).json()["routing_strategy"] == "round_robin"

            new = {"instance_id": "extra", "host": "127.0.0.1", "port": extra[0].port,
                   "model_name": "sim-model"}  # fmt: skip
            assert (await a.post("/admin/instances", json=new)).status_code == 201
            listed = (await b.get("/admin/instances")).json()["instances"]
            assert "extra" in [i["instance_id"] for i in listed]
            # Requests through the other worker are routed to it (round robin over 3).
            served = {(await b.post("/v1/completions", json=BODY)).headers["x-sage-instance"]
                      for _ in range(6)}  # fmt: skip
            assert "extra" in served

            assert (await b.delete("/admin/instances/extra")).status_code == 200
            listed = (await a.get("/admin/instances")).json()["instances"]
            assert "extra" not in [i["instance_id"] for i in listed]
            served = {(await a.post("/v1/completions", json=BODY)).headers["x-sage-instance"]
                      for _ in range(6)}  # fmt: skip
            assert "extra" not in served
    finally:
        stop(gp, children)


def test_sigterm_drains_in_flight_stream_and_stops_every_process(tmp_path: Path) -> None:
    gp = start_workers(tmp_path, 2, "--shutdown-timeout", "20", time_scale=0.2)
    children = children_of(gp.proc.pid)
    try:
        assert len(children) == 3
        lines = stream_through_sigterm(gp, read_s=60, start_s=30, finish_s=60)
        assert lines[-1] == "data: [DONE]" and len(lines) == 61, lines[-3:]
        assert gp.proc.wait(60) == 0
        wait_until_sync(lambda: not any(alive(p) for p in children), "every child stopped")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gp.url}/health", timeout=5)
    finally:
        stop(gp, children)


async def test_dead_worker_is_restarted_and_requests_go_on(tmp_path: Path) -> None:
    gp = start_workers(tmp_path, 2)
    children = children_of(gp.proc.pid)
    victim = next(p for p in children if role_of(p) == "worker")
    try:
        os.kill(victim, signal.SIGKILL)
        async with httpx.AsyncClient(base_url=gp.url, timeout=60) as c:

            async def restarted() -> bool:
                workers = (await c.get("/health")).json()["workers"]
                return workers["restarts"] == 1 and workers["alive"] == 2

            await wait_until(restarted, "the dead worker restarted", timeout_s=120)
        # Fresh connections reach both workers again, and all are answered.
        answers = []
        for _ in range(6):
            async with httpx.AsyncClient(base_url=gp.url, timeout=60) as c:
                answers.append(await c.post("/v1/completions", json=BODY))
        assert all(r.status_code == 200 for r in answers)
        assert {r.headers["x-sage-worker"] for r in answers} == {"0", "1"}
        children = children_of(gp.proc.pid)
        assert victim not in children and len(children) == 3
    finally:
        stop(gp, [*children, victim])


def test_dead_scheduler_stops_the_server_loudly(tmp_path: Path) -> None:
    gp = start_workers(tmp_path, 2)
    children = children_of(gp.proc.pid)
    try:
        scheduler = next(p for p in children if role_of(p) == "scheduler")
        os.kill(scheduler, signal.SIGKILL)
        assert gp.proc.wait(60) == 1
        assert gp.proc.stdout is not None
        out = gp.proc.stdout.read()
        assert "scheduling process" in out and "stopping the server" in out, out
        wait_until_sync(lambda: not any(alive(p) for p in children), "every child stopped")
    finally:
        stop(gp, children)


def test_children_end_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    gp = start_workers(tmp_path, 2)
    children = children_of(gp.proc.pid)
    try:
        assert len(children) == 3
        gp.proc.kill()  # SIGKILL: no cleanup runs in it; the kernel must end its children
        gp.proc.wait()
        wait_until_sync(lambda: not any(alive(p) for p in children), "every orphan ended")
    finally:
        stop(gp, children)


def test_workers_flag_one_is_the_single_process_and_bad_values_fail(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fleet.yaml", time_scale=0.05)
    gp = start_gateway_process("--config", str(cfg), "--workers", "1")
    try:
        assert children_of(gp.proc.pid) == []  # exactly today's server: one process
        assert "workers" not in gp.banner
        r = httpx.post(f"{gp.url}/v1/completions", json=BODY, timeout=60)
        assert r.status_code == 200 and "x-sage-worker" not in r.headers
        assert "workers" not in httpx.get(f"{gp.url}/health", timeout=60).json()
    finally:
        stop(gp, [])
    out = subprocess.run(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "serve", "--workers", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "--workers must be 1 or more" in out.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        out = subprocess.run(
            [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "serve", "--config",
             str(cfg), "--workers", "2", "--port", port],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1 and f"cannot serve on 127.0.0.1:{port}" in out.stderr, out.stderr


def bad_and_good_fleet(tmp_path: Path, sims: SimFleet) -> Path:
    """A round-robin fleet file of two running simulators named `bad` and `good`."""
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(
        "scheduling_policy: fifo\nrouting_strategy: round_robin\ninstances:\n"
        f"  - {{instance_id: bad, host: 127.0.0.1, port: {sims[0].port}, model_name: sim-model}}\n"
        f"  - {{instance_id: good, host: 127.0.0.1, port: {sims[1].port}, model_name: sim-model}}\n"
    )
    return cfg


async def test_failover_and_client_disconnect_cross_the_process_boundary(tmp_path: Path) -> None:
    """A failing instance's errors reach the scheduler (retry elsewhere, circuit), and a
    client that goes away mid-stream cancels its request in the one control plane."""
    async with SimFleet(
        [*gen(1, time_scale=0.05, faults=FaultConfig(error_rate=1.0)), *gen(1, time_scale=1.0)]
    ) as sims:
        cfg = bad_and_good_fleet(tmp_path, sims)
        # In a thread: the simulators run on this loop and must answer the gateway's health
        # probes while it starts (blocked, they failed two probes and both were unhealthy).
        gp = await asyncio.to_thread(
            start_gateway_process, "--config", str(cfg), "--workers", "2", timeout=120
        )
        children = children_of(gp.proc.pid)
        try:
            async with httpx.AsyncClient(base_url=gp.url, timeout=60) as c:
                answers = [await c.post("/v1/completions", json=BODY) for _ in range(6)]
                assert [r.status_code for r in answers] == [200] * 6
                assert {r.headers["x-sage-instance"] for r in answers} == {"good"}
                metrics = (await c.get("/v1/sage/metrics")).json()
                assert metrics["retries"] >= 1 and metrics["failovers"] >= 1

                body = {**BODY, "max_tokens": 2000, "stream": True}
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            break  # one chunk, then the client goes away

                async def cancelled() -> bool:
                    m = (await c.get("/v1/sage/metrics")).json()
                    return m["active_requests"] == 0 and m["failed_requests"] >= 1

                await wait_until(cancelled, "the abandoned stream cancelled", timeout_s=60)
        finally:
            stop(gp, children)
