"""How long an admin change made on one replica takes to be in force on the others.

Three coordinators, each with its own `FleetShare` to one real `redis-server` (started here
on a free loopback port; Debian package `redis-server`). On replica r0: a policy switch, a
router switch or a drain, made as the gateway's admin API makes it (change locally, then
`announce_admin`); measured: wall time until both other replicas have it in force, checked
every 0.5 ms. Wall-clock: re-run on a quiet machine for numbers to quote.

usage: python -m benchmarks.bench_admin_propagation [--rounds 30]
Writes benchmarks/results/admin_propagation.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.fleetshare.redis_store import RedisFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.types import ExecutionInstance
from sage_cp_plugin.virtual.provenance import provenance

OUT = Path(__file__).parent / "results"


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


async def measure(url: str, rounds: int) -> dict[str, list[float]]:
    managers, shares = [], []
    for i in range(3):
        m = ControlPlaneManager(scheduling_policy="fifo")
        for k in range(rounds):  # one instance per drain round; never contacted
            m.register_instance(
                ExecutionInstance(instance_id=f"i{k}", host="127.0.0.1", port=9, model_name="m")
            )
        managers.append(m)
        s = FleetShare(m, RedisFleetStateStore(url), f"r{i}")
        await s.start()
        shares.append(s)
    out: dict[str, list[float]] = {"policy": [], "router": [], "drain": []}
    policies, routers = ("priority", "fifo"), ("round_robin", "load_balanced")
    try:
        for k in range(rounds):
            for kind in out:
                t0 = time.perf_counter()
                if kind == "policy":
                    name = policies[k % 2]
                    managers[0].update_policy(name)
                    await shares[0].announce_admin(policy=(name, {}))
                    done = lambda name=name: all(m.policy_name == name for m in managers[1:])  # noqa: E731
                elif kind == "router":
                    name = routers[k % 2]
                    managers[0].update_router(name)
                    await shares[0].announce_admin(router=(name, {}))
                    done = lambda name=name: all(m.routing_strategy == name for m in managers[1:])  # noqa: E731
                else:
                    iid = f"i{k}"
                    managers[0].drain_instance(iid)
                    await shares[0].announce_admin(drain=(iid, False))
                    done = lambda iid=iid: all(m.fleet.states[iid].draining for m in managers[1:])  # noqa: E731
                while not done():
                    await asyncio.sleep(0.0005)
                    if time.perf_counter() - t0 > 10:
                        raise RuntimeError(f"{kind} change not propagated in 10 s")
                out[kind].append((time.perf_counter() - t0) * 1000)
    finally:
        for s in shares:
            await s.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            res = asyncio.run(measure(url, args.rounds))
        finally:
            proc.kill()
            proc.wait()
    stats: dict[str, Any] = {
        k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
            "max_ms": float(max(v)), "n": len(v)}
        for k, v in res.items()
    }  # fmt: skip
    OUT.mkdir(exist_ok=True)
    (OUT / "admin_propagation.json").write_text(
        json.dumps({"provenance": provenance(), "stats": stats, "samples_ms": res}, indent=1)
    )
    lines = ["| change | n | p50 ms | p99 ms | max ms | within 1 s |", "|---|---|---|---|---|---|"]
    for k, s in stats.items():
        ok = "yes" if s["max_ms"] < 1000 else "NO"
        lines.append(
            f"| {k} | {s['n']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} | {ok} |"
        )
    head = (
        "# Admin change propagation across 3 replicas (real redis-server)\n\n"
        + __doc__.split("usage:")[0]
    )
    (OUT / "admin_propagation.md").write_text(head + "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
