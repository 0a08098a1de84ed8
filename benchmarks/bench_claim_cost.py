"""What a request-id claim costs a replica (`--redis-url`, fleetshare/claims.py), measured in
the process that makes it, against a real `redis-server` on loopback (started here).

1. The claim alone: `RequestClaims.claim` of a fresh id (one Lua script call, one round
   trip), one at a time and 16 at once, next to a Redis PING through the same client (the
   floor of any round trip) in the same run: wall time per call and this process's CPU
   time per call.
2. Per request: one replica (`serving`, in this process) in front of two simulated
   instances, non-streamed completions of one token at concurrency 1, requests with an
   `x-request-id` (a claim each) and without (no claim), rounds alternated: wall time per
   request and this process's CPU per request (the fleet and the client run in this process
   too: they are the same for both arms, so the difference is the claim's).

Wall-clock on a shared machine: the load average is recorded; ratios within the run are
what to quote.

usage: python -m benchmarks.bench_claim_cost [--calls 3000] [--requests 600] [--rounds 3]
Writes benchmarks/results/claim_cost.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sage_cp_plugin.entrypoints.gateway import GatewaySettings, serving

from benchmarks.bench_admin_propagation import start_redis
from sage_cp_plugin.config import ControlPlaneConfig, sim_instances
from sage_cp_plugin.fleetshare.claims import RequestClaims
from sage_cp_plugin.fleetshare.peers import PeerLoads
from sage_cp_plugin.fleetshare.redis_store import RedisFleetStateStore
from sage_cp_plugin.sim import SimFleet, SimInstanceConfig
from sage_cp_plugin.virtual.provenance import provenance

OUT = Path(__file__).parent / "results"


async def _timed(calls: int, concurrency: int, one: Any) -> dict[str, float]:
    walls: list[float] = []
    cpu0 = time.process_time()
    for _ in range(calls // concurrency):
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        walls.append((time.perf_counter() - t0) * 1000)
    cpu = (time.process_time() - cpu0) * 1000 / (len(walls) * concurrency)
    return {
        "wall_p50_ms": float(np.percentile(walls, 50)),
        "wall_p99_ms": float(np.percentile(walls, 99)),
        "cpu_ms_per_call": cpu,
        "calls": len(walls) * concurrency,
    }


async def claim_alone(url: str, calls: int) -> dict[str, Any]:
    store = RedisFleetStateStore(url)
    claims = RequestClaims(store, "r0", PeerLoads("r0", 3.0), time.monotonic, lambda: True)
    out: dict[str, Any] = {}
    try:
        await store.ping()
        await claims.claim("warm-up")  # loads the script once
        for conc in (1, 16):
            for arm in ("ping", "claim", "ping", "claim"):  # alternated, second pair kept

                async def one(arm: str = arm) -> None:
                    if arm == "ping":
                        await store.ping()
                    else:
                        await claims.claim(uuid.uuid4().hex)

                out[f"{arm}@{conc}"] = await _timed(calls, conc, one)
    finally:
        await store.aclose()
    return out


async def per_request(url: str, requests: int, rounds: int) -> dict[str, Any]:
    cfgs = [SimInstanceConfig(time_scale=0.001, seed=i) for i in range(2)]
    samples: dict[str, list[dict[str, float]]] = {"with_id": [], "without_id": []}
    async with SimFleet(cfgs) as fleet:
        cfg = ControlPlaneConfig(instances=sim_instances(fleet.members), scheduling_policy="fifo")
        manager = cfg.build_manager()
        await manager.start()
        settings = GatewaySettings(port=0, redis_url=url, replica_id="r0")
        try:
            async with (
                serving(manager, settings) as (base, gw),
                httpx.AsyncClient(base_url=base, timeout=30) as c,
            ):
                body = {"model": "sim-model", "prompt": "hi", "max_tokens": 1}
                for _ in range(50):  # warm-up, both paths
                    await c.post("/v1/completions", json=body)
                    await c.post(
                        "/v1/completions", json=body, headers={"x-request-id": uuid.uuid4().hex}
                    )
                for _ in range(rounds):
                    for arm in ("without_id", "with_id"):
                        walls = []
                        cpu0 = time.process_time()
                        for _ in range(requests):
                            hdr = {"x-request-id": uuid.uuid4().hex} if arm == "with_id" else {}
                            t0 = time.perf_counter()
                            r = await c.post("/v1/completions", json=body, headers=hdr)
                            walls.append((time.perf_counter() - t0) * 1000)
                            assert r.status_code == 200, r.text
                        cpu = (time.process_time() - cpu0) * 1000 / requests
                        samples[arm].append(
                            {"cpu_ms_per_request": cpu,
                             "wall_p50_ms": float(np.percentile(walls, 50))}
                        )  # fmt: skip
                assert gw.share is not None
                counts = dict(gw.share.claims.counts)
        finally:
            await manager.stop()
    med = {
        arm: {k: float(np.median([s[k] for s in v])) for k in v[0]} for arm, v in samples.items()
    }
    return {"rounds": samples, "median": med, "claim_outcomes": counts}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            alone = asyncio.run(claim_alone(url, args.calls))
            e2e = asyncio.run(per_request(url, args.requests, args.rounds))
        finally:
            proc.kill()
            proc.wait()
    p = provenance()
    OUT.mkdir(exist_ok=True)
    (OUT / "claim_cost.json").write_text(
        json.dumps(
            {"provenance": p, "args": vars(args), "claim_alone": alone, "per_request": e2e},
            indent=1,
        )
    )
    lines = [
        "| call | in flight | wall p50 ms (per batch) | wall p99 ms | CPU ms per call |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, s in alone.items():
        arm, conc = key.split("@")
        lines.append(
            f"| {arm} | {conc} | {s['wall_p50_ms']:.3f} | {s['wall_p99_ms']:.3f} | "
            f"{s['cpu_ms_per_call']:.3f} |"
        )
    med = e2e["median"]
    w, wo = med["with_id"], med["without_id"]
    lines += [
        "",
        "| requests | CPU ms per request (median of rounds) | wall p50 ms |",
        "|---|---:|---:|",
        f"| without x-request-id | {wo['cpu_ms_per_request']:.3f} | {wo['wall_p50_ms']:.3f} |",
        f"| with x-request-id (a claim each) | {w['cpu_ms_per_request']:.3f} | "
        f"{w['wall_p50_ms']:.3f} |",
        f"| difference | {w['cpu_ms_per_request'] - wo['cpu_ms_per_request']:+.3f} | "
        f"{w['wall_p50_ms'] - wo['wall_p50_ms']:+.3f} |",
    ]
    table = "\n".join(lines) + "\n"
    (OUT / "claim_cost.md").write_text(
        "# Cost of a request-id claim, real redis-server on loopback\n\n"
        f"{__doc__.split('usage:')[0]}\n{args.calls} calls per arm (the second of two "
        f"alternated passes), {args.requests} requests x {args.rounds} rounds per arm; "
        f"claim outcomes {e2e['claim_outcomes']}; commit {p['commit'][:7]}, load average "
        f"{p['loadavg_1m']:.1f} at the end.\n\n" + table
    )
    _plot(alone, e2e)
    print(table)


def _plot(alone: dict[str, Any], e2e: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    keys = list(alone)
    a.bar(keys, [alone[k]["cpu_ms_per_call"] for k in keys], color="tab:blue")
    a.set_ylabel("CPU ms per call (this process)")
    a.set_title("claim vs PING, same client")
    a.tick_params(axis="x", rotation=30)
    arms = ["without_id", "with_id"]
    for i, arm in enumerate(arms):
        vals = [r["cpu_ms_per_request"] for r in e2e["rounds"][arm]]
        b.scatter([i] * len(vals), vals, color="tab:orange")
        b.bar(i, e2e["median"][arm]["cpu_ms_per_request"], alpha=0.4, color="tab:orange")
    b.set_xticks(range(len(arms)), arms)
    b.set_ylabel("CPU ms per request (process: replica + fleet + client)")
    b.set_title("per request, rounds and median")
    fig.tight_layout()
    fig.savefig(OUT / "claim_cost.png", dpi=100)


if __name__ == "__main__":
    main()
