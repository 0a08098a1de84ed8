"""Harness for the gateway tests (no tests here): a simulated fleet on loopback, a started
ControlPlaneManager over it, and the gateway served on 127.0.0.1 in the test's event loop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sage_cp_plugin.entrypoints.gateway import Gateway, GatewaySettings, serving

from sage_cp_plugin.config import ControlPlaneConfig, HealthSettings, sim_instances
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.sim import SimFleet, SimInstanceConfig

FAST_HEALTH = HealthSettings(
    interval_s=0.1, timeout_s=0.5, unhealthy_threshold=1, healthy_threshold=1,
    failure_threshold=2, cooldown_s=0.3,
)  # fmt: skip


@dataclass
class Harness:
    url: str
    gateway: Gateway
    fleet: SimFleet

    @property
    def manager(self) -> ControlPlaneManager:
        return self.gateway.manager

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kw)

    async def sim_state(self, i: int) -> dict[str, Any]:
        async with httpx.AsyncClient() as c:
            data: dict[str, Any] = (await c.get(f"{self.fleet.urls[i]}/sim/state")).json()
            return data


def gen(n: int = 2, time_scale: float = 0.02, **fields: Any) -> list[SimInstanceConfig]:
    return [SimInstanceConfig(time_scale=time_scale, seed=i, **fields) for i in range(n)]


def embed(time_scale: float = 0.02) -> SimInstanceConfig:
    return SimInstanceConfig(
        served_model_names=["sim-embed"], role="embedding", time_scale=time_scale, seed=50
    )


@asynccontextmanager
async def gateway_over_sim(
    configs: Sequence[SimInstanceConfig] | None = None,
    *,
    settings: dict[str, Any] | None = None,
    instance_fields: dict[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[Harness]:
    configs = list(configs) if configs is not None else [*gen(2), embed()]
    config.setdefault("scheduling_policy", "fifo")
    config.setdefault("health", FAST_HEALTH)
    async with SimFleet(configs) as fleet:
        instances = [
            i.model_copy(update=instance_fields or {}) for i in sim_instances(fleet.members)
        ]
        cfg = ControlPlaneConfig(instances=instances, **config)
        gs = GatewaySettings(port=0, **(settings or {}))
        manager = cfg.build_manager(result_retention=gs.result_retention)
        await manager.start()
        try:
            async with serving(manager, gs) as (url, gateway):
                yield Harness(url, gateway, fleet)
        finally:
            await manager.stop()


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[str]
    url: str
    banner: str


def start_gateway_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> GatewayProcess:
    """`sage-cp serve --port 0 ...` as a separate process; returns once it listens.

    It blocks while it waits: a test whose simulators run on its own event loop calls it
    through `asyncio.to_thread`, or the fleet cannot answer the gateway's first probes.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return GatewayProcess(proc, m.group(1), line)
    proc.kill()
    raise AssertionError("gateway did not start:\n" + "".join(lines))


def write_config(path: Path, time_scale: float) -> Path:
    path.write_text(f"scheduling_policy: fifo\nembedded_fleet:\n  time_scale: {time_scale}\n")
    return path


def stream_through_sigterm(
    gp: GatewayProcess,
    headers: dict[str, str] | None = None,
    *,
    read_s: float,
    start_s: float,
    finish_s: float,
) -> list[str]:
    """Start a 60-token completion stream, send SIGTERM to the gateway once its first chunk
    arrived, and return every `data:` line the stream got (a drain must finish it whole)."""
    lines: list[str] = []
    started = threading.Event()

    def stream() -> None:
        body = {"model": "sim-model", "prompt": "go", "max_tokens": 60, "stream": True}
        with (
            httpx.Client(base_url=gp.url, timeout=read_s) as c,
            c.stream("POST", "/v1/completions", json=body, headers=headers) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("data:"):
                    lines.append(line)
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(start_s)
    gp.proc.send_signal(signal.SIGTERM)
    t.join(finish_s)
    return lines
