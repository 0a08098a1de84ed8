"""Simulated instances over real loopback sockets: SimFleet, SimFleetThread and `sage-cp sim`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sage_cp_plugin.sim import (
    SimFleet,
    SimFleetMember,
    SimFleetThread,
    SimInstanceConfig,
    embedded_default_fleet,
)
from tests.helpers import wait_until


async def wait_until_idle(m: SimFleetMember, timeout: float = 5.0) -> None:
    """Wait until nothing runs and no KV is held (cleanup is asynchronous)."""

    def idle() -> bool:
        st = m.sim.engine.state()
        return st["running"] == 0 and st["waiting"] == 0 and st["kv_blocks_used"] == 0

    await wait_until(idle, f"an idle engine ({m.sim.engine.state()})", timeout)


async def test_fleet_serves_over_loopback_and_streams() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=0)] * 2) as fleet:
        assert all(u.startswith("http://127.0.0.1:") for u in fleet.urls)
        assert len(set(fleet.urls)) == 2
        async with httpx.AsyncClient() as c:
            for url in fleet.urls:
                assert (await c.get(f"{url}/health")).status_code == 200
            req = {"prompt": "x y", "max_tokens": 5, "stream": True}
            async with c.stream("POST", f"{fleet.urls[0]}/v1/completions", json=req) as r:
                lines = [ln async for ln in r.aiter_lines() if ln]
            assert lines[-1] == "data: [DONE]" and len(lines) == 6


async def test_listening_socket_disables_nagle() -> None:
    # Without TCP_NODELAY every POST stalls ~40 ms (Nagle + delayed ACK); check the cause,
    # not the timing.
    async with SimFleet([SimInstanceConfig(time_scale=0)]) as fleet:
        server = fleet[0]._server
        assert server is not None
        sock = server.servers[0].sockets[0]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_client_disconnect_mid_stream_frees_the_sequence() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=0.2)]) as fleet:
        m = fleet[0]
        async with httpx.AsyncClient() as c:
            req = {"prompt": "a " * 100, "max_tokens": 100000, "stream": True}
            async with c.stream("POST", f"{m.url}/v1/completions", json=req) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        break
            assert m.sim.engine.state()["kv_blocks_used"] > 0 or m.sim.engine.counters.aborted
        await wait_until_idle(m)
        assert m.sim.engine.counters.aborted == 1 and m.sim.engine.counters.finished == 0


async def test_kill_refuses_connections_and_restart_brings_a_fresh_engine() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=0)] * 2) as fleet:
        url0, url1 = fleet.urls
        async with httpx.AsyncClient() as c:
            await c.post(f"{url0}/v1/completions", json={"prompt": "x", "max_tokens": 2})
            await fleet.kill(0)
            assert not fleet[0].alive
            with pytest.raises(httpx.ConnectError):
                await c.get(f"{url0}/health")
            assert (await c.get(f"{url1}/health")).status_code == 200
            await fleet.restart(0)
            assert fleet.urls[0] == url0 and fleet[0].alive
            assert (await c.get(f"{url0}/health")).status_code == 200
            state = (await c.get(f"{url0}/sim/state")).json()
            assert state["counters"]["finished"] == 0  # a fresh engine


async def test_kill_during_a_stream_breaks_the_stream() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=0.2)]) as fleet:
        async with httpx.AsyncClient() as c:
            req = {"prompt": "a b", "max_tokens": 100000, "stream": True}
            with pytest.raises(httpx.RemoteProtocolError):
                async with c.stream("POST", f"{fleet.urls[0]}/v1/completions", json=req) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            await fleet.kill(0)


async def test_fault_disconnect_after_chunks_drops_the_connection() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=0)]) as fleet:
        async with httpx.AsyncClient() as c:
            url = fleet.urls[0]
            await c.post(f"{url}/sim/faults", json={"disconnect_after_chunks": 2})
            got: list[str] = []
            with pytest.raises(httpx.RemoteProtocolError):
                req = {"prompt": "a", "max_tokens": 50, "stream": True}
                async with c.stream("POST", f"{url}/v1/completions", json=req) as r:
                    async for line in r.aiter_lines():
                        if line:
                            got.append(line)
            assert len(got) == 2
        await wait_until_idle(fleet[0])


async def test_fault_hang_times_out_the_client_and_kill_still_works() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=0)]) as fleet:
        async with httpx.AsyncClient() as c:
            url = fleet.urls[0]
            await c.post(f"{url}/sim/faults", json={"hang": True})
            with pytest.raises(httpx.ReadTimeout):
                await c.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=0.2)
        await fleet.kill(0)  # must not wait for the hanging handler


def test_fleet_thread_for_synchronous_callers() -> None:
    with SimFleetThread(embedded_default_fleet(time_scale=0)) as fleet:
        assert len(fleet.urls) == 3
        gen = httpx.post(
            f"{fleet.urls[0]}/v1/completions", json={"model": "sim-model", "prompt": "hi"}
        )
        assert gen.status_code == 200
        emb = httpx.post(
            f"{fleet.urls[2]}/v1/embeddings", json={"model": "sim-embed", "input": "hi"}
        )
        assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) == 384
        models = {httpx.get(f"{u}/v1/models").json()["data"][0]["id"] for u in fleet.urls}
        assert models == {"sim-model", "sim-embed"}
        fleet.kill(1)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{fleet.urls[1]}/health")
        fleet.restart(1)
        assert httpx.get(f"{fleet.urls[1]}/health").status_code == 200


async def test_consecutive_ports_from_a_base_port() -> None:
    base = _free_port_pair()
    async with SimFleet([SimInstanceConfig(time_scale=0)] * 2, port=base) as fleet:
        assert [m.port for m in fleet.members] == [base, base + 1]


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no two consecutive free ports")


def test_sage_cp_sim_command_starts_serves_and_stops() -> None:
    port = _free_port_pair()
    cmd = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "sim", "--instances", "2",
           "--port", str(port), "--model", "cli-model", "--time-scale", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "ready" in line:
                    break
            assert any(f"http://127.0.0.1:{port + 1}" in ln for ln in lines), lines
            for p in (port, port + 1):
                assert httpx.get(f"http://127.0.0.1:{p}/health").status_code == 200
            models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
            assert models["data"][0]["id"] == "cli-model"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sage_cp_sim_rejects_a_bad_preset() -> None:
    cmd = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "sim", "--preset", "h900"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent)
    assert out.returncode == 2 and "known presets" in out.stderr
