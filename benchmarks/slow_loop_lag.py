"""How long 1,000 slow connections hold a server's event loop: the gateway's connection
protocol (entrypoints/gateway/connections.py) against uvicorn's own, on a trivial app.

A probe task in the server's loop sleeps 1 ms at a time and records how late it wakes; the
slow clients (benchmarks/hostile_slow.py: 4/10 idle, 3/10 dribbling headers, 3/10 dribbling
bodies, in a process of their own at nice 19) connect at once. With the gateway's protocol
they are closed at the 3 s timeouts; uvicorn's never closes them (the clients give up at
4.5 s). Prints the server's CPU seconds and the probe's lateness (p50, p99, max, and the
worst few with their time since the clients started), to tell the server's own stalls from
the rest of a benchmark's latency.

    python benchmarks/slow_loop_lag.py [--protocol guarded|uvicorn] [--connections 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sage_cp_plugin.entrypoints.gateway.connections import (  # noqa: E402
    ConnectionLimits,
    guarded_protocol,
)

TIMEOUT_S = 3.0


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def run(protocol: str, connections: int) -> dict[str, Any]:
    limits = ConnectionLimits(header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S,
                              keep_alive_s=TIMEOUT_S)  # fmt: skip
    http = guarded_protocol(limits) if protocol == "guarded" else HttpToolsProtocol
    config = uvicorn.Config(_app, host="127.0.0.1", port=0, http=http, lifespan="off",
                            log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn exposes only a flag; startup only)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    lags: list[tuple[float, float]] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0.001)
            lags.append((t, loop.time() - t - 0.001))

    probing = asyncio.create_task(probe())
    cpu0 = time.process_time()
    give_up = 4 * TIMEOUT_S if protocol == "guarded" else 1.5 * TIMEOUT_S
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "benchmarks" / "bench_hostile.py"), "--slow-worker",
        f"http://127.0.0.1:{port}", str(connections), str(give_up), "19",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdout is not None
    await worker.stdout.readline()  # ready
    t0 = loop.time()
    await worker.stdout.read()
    await worker.wait()
    done.set()
    await probing
    cpu = time.process_time() - cpu0
    server.should_exit = True
    await serving
    ms = np.array([lag for t, lag in lags if t >= t0]) * 1000
    worst = sorted(((lag * 1000, t - t0) for t, lag in lags if t >= t0), reverse=True)[:5]
    return {"protocol": protocol, "connections": connections, "server_cpu_s": cpu,
            "lag_ms_p50": float(np.percentile(ms, 50)), "lag_ms_p99": float(np.percentile(ms, 99)),
            "lag_ms_max": float(ms.max()),
            "worst_ms_at_s": [(round(a, 1), round(b, 2)) for a, b in worst]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=("guarded", "uvicorn"), default="guarded")
    ap.add_argument("--connections", type=int, default=1000)
    args = ap.parse_args()
    print(uvloop.run(run(args.protocol, args.connections)))


if __name__ == "__main__":
    main()
