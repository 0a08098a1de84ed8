"""What the coordinator adds to each request, against direct httpx calls.

Workload: completions with max_tokens=16 against 2 zero-latency simulated instances
(`sage-cp sim --time-scale 0`, a separate process so the servers do not share the
client's event loop). Measured in one run, at concurrency 1, 16 and 64:
- direct httpx: an `httpx.AsyncClient` posting round-robin straight to the instances;
- direct, same stack: the same but on the coordinator's own HTTP stack (httpx API over
  aiohttp's client, `httpx-aiohttp`), the baseline the added latency and ratio are taken to,
  so that they measure the coordinator and not the choice of HTTP client;
- manager: `ControlPlaneManager.generate` (fifo + round_robin), in two modes —
  `upstream_streaming=True` (the default: the answer is streamed from the instance so TTFT
  and inter-token latency are measured for every request) and `False` (one JSON answer).
Reported: p50/p99 latency, requests/s, added p50 and the throughput ratio to direct.
Goal (issue 3): added p50 under 1 ms and at least 80 % of direct throughput.

Run: python -m benchmarks.bench_overhead [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
from httpx_aiohttp import AiohttpTransport

from benchmarks.common import RESULTS, machine, write_results
from sage_cp_plugin import ControlPlaneManager, ExecutionInstance

CONCURRENCY = [1, 16, 64]


def free_port_block(n: int) -> int:
    for base in range(20000, 60000, 50):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


async def wait_ready(urls: list[str]) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            try:
                codes = [(await c.get(f"{u}/health")).status_code for u in urls]
                if codes == [200] * len(urls):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("simulators did not come up")


async def run_load(call: Any, concurrency: int, total: int) -> dict[str, float]:
    lat: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await call(i)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    arr = np.array(lat) * 1000
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "rps": total / wall,
        "n": total,
    }


async def measure(port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    urls = [f"http://127.0.0.1:{port + i}" for i in range(2)]
    rows: list[dict[str, Any]] = []
    await wait_ready(urls)
    if urls:
        body = {"model": "sim-model", "prompt": "hello world", "max_tokens": 16}
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        same_stack = httpx.AsyncClient(
            limits=limits, timeout=60, transport=AiohttpTransport(limits=limits, trust_env=False)
        )
        async with httpx.AsyncClient(limits=limits, timeout=60) as client, same_stack:

            async def direct(i: int) -> None:
                r = await client.post(f"{urls[i % 2]}/v1/completions", json=body)
                r.raise_for_status()

            async def direct_same(i: int) -> None:
                r = await same_stack.post(f"{urls[i % 2]}/v1/completions", json=body)
                r.raise_for_status()

            managers = {}
            for mode in (True, False):
                m = ControlPlaneManager(
                    scheduling_policy="fifo",
                    routing_strategy="round_robin",
                    enable_pd_separation=False,
                    enable_monitoring=False,
                    upstream_streaming=mode,
                )
                for k in range(2):
                    m.register_instance(
                        ExecutionInstance(
                            instance_id=f"s{k}",
                            host="127.0.0.1",
                            port=port + k,
                            model_name="sim-model",
                            max_concurrent_requests=256,
                        )
                    )
                await m.start()
                managers["manager (streamed upstream)" if mode else "manager (plain upstream)"] = m

            def via(m: ControlPlaneManager) -> Any:
                async def call(i: int) -> None:
                    res = await m.generate("hello world", max_tokens=16)
                    if res.state != "completed":
                        raise RuntimeError(res.error)

                return call

            for c in CONCURRENCY:
                n = args.requests if c > 1 else max(200, args.requests // 4)
                await run_load(direct, c, 50)  # warm the connections
                plain = await run_load(direct, c, n)
                rows.append({"path": "direct httpx", "concurrency": c, **plain})
                print(f"c={c:<3} direct httpx  p50={plain['p50_ms']:.2f}ms rps={plain['rps']:.0f}")
                await run_load(direct_same, c, 50)
                base = await run_load(direct_same, c, n)
                rows.append(
                    {"path": "direct (coordinator's client stack)", "concurrency": c, **base}
                )
                print(f"c={c:<3} direct same   p50={base['p50_ms']:.2f}ms rps={base['rps']:.0f}")
                for name, m in managers.items():
                    await run_load(via(m), c, 50)
                    r = await run_load(via(m), c, n)
                    r["added_p50_ms"] = r["p50_ms"] - base["p50_ms"]
                    r["throughput_ratio"] = r["rps"] / base["rps"]
                    rows.append({"path": name, "concurrency": c, **r})
                    print(
                        f"c={c:<3} {name:<28} p50={r['p50_ms']:.2f}ms (+{r['added_p50_ms']:.2f}) "
                        f"rps={r['rps']:.0f} ({r['throughput_ratio']:.0%})"
                    )
            for m in managers.values():
                await m.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    port = free_port_block(2)
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sage_cp_plugin.entrypoints.cli",
            "sim",
            "--instances",
            "2",
            "--port",
            str(port),
            "--time-scale",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rows = asyncio.run(measure(port, args))
    finally:
        sim.terminate()
        sim.wait(10)
    mach = machine()
    md = [
        "# Coordinator overhead vs direct httpx",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, load average {mach['loadavg_1m']:.1f}. "
        "Workload: completions, max_tokens=16, 2 zero-latency simulated instances in a separate "
        "process; load generator = asyncio workers in the coordinator's process (it shares the "
        "client's CPU, as an embedded library does). Baselines in the same run: direct httpx, and "
        "direct on the coordinator's own client stack (httpx API over aiohttp); 'added p50' and "
        "'throughput vs direct' are relative to the latter, so they measure the coordinator, "
        "not the choice of HTTP client.",
        "",
        "| path | concurrency | p50 ms | p99 ms | req/s | added p50 ms | throughput vs direct (same stack) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        added = f"{r['added_p50_ms']:+.2f}" if "added_p50_ms" in r else "—"
        ratio = f"{r['throughput_ratio']:.0%}" if "throughput_ratio" in r else "100%"
        md.append(
            f"| {r['path']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['rps']:.0f} | {added} | {ratio} |"
        )
    md += ["", "![overhead](overhead.png)"]
    write_results("overhead", {"machine": mach, "rows": rows}, "\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for path in dict.fromkeys(r["path"] for r in rows):
        pts = [r for r in rows if r["path"] == path]
        ax[0].plot(
            [r["concurrency"] for r in pts], [r["p50_ms"] for r in pts], marker="o", label=path
        )
        ax[1].plot([r["concurrency"] for r in pts], [r["rps"] for r in pts], marker="o", label=path)
    ax[0].set_ylabel("p50 latency (ms)")
    ax[1].set_ylabel("requests/s")
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrency")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "overhead.png", dpi=110)


if __name__ == "__main__":
    main()
