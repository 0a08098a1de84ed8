"""The floor under `sage-cp serve`'s CPU per request: what the same server stack and HTTP
client cost with none of the control plane's work, measured in one run.

Servers, each its own process in front of the same zero-latency simulated instance
(`sage-cp sim --time-scale 0`), driven by bench_gateway_cpu.py's closed-loop raw-socket
client with a non-streamed `/v1/completions` (16 tokens), CPU from /proc:

- `uvicorn-fixed`: uvicorn (httptools, uvloop) + one Starlette route that reads and parses
  the JSON body and answers a fixed body: the ASGI server and framework alone;
- `uvicorn-aiohttp-plain`: the same, forwarding the body to the instance non-streamed over
  one aiohttp session and answering its body: the smallest proxy on this stack;
- `uvicorn-aiohttp-streamed`: the same, asking the instance to stream and parsing each
  chunk with orjson (what `sage-cp serve` does for TTFT), answering a fixed body;
- `sage-cp`: `sage-cp serve` with defaults (fifo, round_robin), one instance.

And the HTTP clients alone, in this process, one request at a time to the instance (CPU of
this process per request, its event loop included): aiohttp (as the executor uses it),
httpx (httpcore), a raw asyncio stream (the lower bound of any Python client), aiohttp
streamed (17 chunks, not parsed).

    python benchmarks/gateway_cpu_floor.py [--requests 2000] [--concurrency 1 16]

Writes benchmarks/results/gateway_cpu_floor.{json,md} (stem set by --out). CPU ratios in
one run hold on a loaded machine; say the load (the header records it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_gateway import CLI, Procs, free_port, machine, start_sim_fleet, wait_http
from benchmarks.bench_gateway_cpu import body, drive, session_cpu_s
from sage_cp_plugin.virtual.provenance import write_stamped

RESULTS = Path(__file__).resolve().parent / "results"

# The minimal servers: argv mode, port, upstream URL. Kept as one source text so each runs
# in a process of its own (its CPU is then its own).
_APP = r"""
import json, sys
import aiohttp, orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

mode, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
session = None
HEADERS = {"content-type": "application/json"}

async def completions(request):
    global session
    fields = json.loads(await request.body())
    if mode == "fixed":
        return Response(b'{"ok":1}', media_type="application/json")
    if session is None:
        session = aiohttp.ClientSession()
    fields["stream"] = mode == "streamed"
    async with session.post(upstream, data=json.dumps(fields).encode(), headers=HEADERS) as r:
        if mode == "plain":
            return Response(await r.read(), media_type="application/json")
        chunks = 0
        async for line in r.content:
            if line.startswith(b"data:") and b"[DONE]" not in line:
                orjson.loads(line[5:])
                chunks += 1
    return Response(b'{"chunks":%d}' % chunks, media_type="application/json")

async def health(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                        Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
            loop="uvloop", http="httptools")
"""

SERVERS = {"uvicorn-fixed": "fixed", "uvicorn-aiohttp-plain": "plain",
           "uvicorn-aiohttp-streamed": "streamed"}  # fmt: skip


async def _clients(host: str, port: int, n: int) -> dict[str, float]:
    """CPU ms per request of this process for each client, one request at a time."""
    import aiohttp
    import httpx

    url = f"http://{host}:{port}/v1/completions"
    plain, streamed = body(False), body(True)
    headers = {"content-type": "application/json"}
    out: dict[str, float] = {}

    async def timed(name: str, one: Any) -> None:
        for _ in range(min(200, n)):  # warm-up: connections open, code paths hot
            await one()
        c0 = time.process_time()
        for _ in range(n):
            await one()
        out[name] = 1000 * (time.process_time() - c0) / n

    async with aiohttp.ClientSession() as session, httpx.AsyncClient() as client:

        async def aio() -> None:
            async with session.post(url, data=plain, headers=headers) as r:
                await r.read()

        async def aio_streamed() -> None:
            async with session.post(url, data=streamed, headers=headers) as r:
                async for _ in r.content.iter_any():
                    pass

        async def hx() -> None:
            (await client.post(url, content=plain, headers=headers)).read()

        reader, writer = await asyncio.open_connection(host, port)
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(plain)}\r\n\r\n").encode()  # fmt: skip

        async def raw() -> None:
            writer.write(head + plain)
            lines = (await reader.readuntil(b"\r\n\r\n")).lower().split(b"\r\n")
            size = next(int(h[15:]) for h in lines if h.startswith(b"content-length:"))
            await reader.readexactly(size)

        await timed("aiohttp", aio)
        await timed("httpx", hx)
        await timed("raw asyncio stream", raw)
        await timed("aiohttp streamed (17 chunks, unparsed)", aio_streamed)
        writer.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--out", default="gateway_cpu_floor")
    args = ap.parse_args()
    if args.requests < 1 or any(c < 1 for c in args.concurrency):
        ap.error("--requests and --concurrency must be positive")
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="gwcpu-floor-"))
    servers: list[dict[str, Any]] = []
    try:
        sims, cfg = start_sim_fleet(procs, 1, tmp)
        host, sport = sims[0]
        app = tmp / "floor_app.py"
        app.write_text(_APP)
        upstream = f"http://{host}:{sport}/v1/completions"
        for name in [*SERVERS, "sage-cp"]:
            port = free_port()
            if name == "sage-cp":
                argv = [*CLI, "serve", "--config", str(cfg), "--port", str(port)]
            else:
                argv = [sys.executable, str(app), SERVERS[name], str(port), upstream]
            proc = procs.start(argv)
            wait_http(f"http://127.0.0.1:{port}/health", timeout=300)
            eps = [("127.0.0.1", port)]
            asyncio.run(drive(eps, False, 1, 300))  # warm-up
            for c in args.concurrency:
                c0 = session_cpu_s(proc.pid)
                _lat, errors, _wall = asyncio.run(drive(eps, False, c, args.requests))
                cpu = 1000 * (session_cpu_s(proc.pid) - c0) / args.requests
                row = {"server": name, "concurrency": c, "requests": args.requests,
                       "errors": errors, "cpu_ms_per_request": round(cpu, 3)}  # fmt: skip
                servers.append(row)
                print(f"{name:<26} c={c:<3} cpu {cpu:.3f} ms/req  errors {errors}", flush=True)
            proc.terminate()  # one server at a time: the next one's CPU is its own
            proc.wait(30)
        clients = asyncio.run(_clients(host, sport, args.requests))
        for name, ms in clients.items():
            print(f"client {name:<40} {ms:.3f} ms CPU/req", flush=True)
    finally:
        procs.stop_all()
    meta = {"machine": machine(), "loadavg": loadavg, "requests": args.requests}
    md = [
        "# Gateway CPU floor: the server stack and HTTP client without the control plane",
        "",
        f"Machine: {meta['machine']}; load average at start {loadavg} (CPU ratios in one run "
        "hold under load). Non-streamed POST /v1/completions, 16 tokens, one zero-latency "
        f"simulated instance, {args.requests} requests per point after a warm-up.",
        "",
        "| server | conc. | CPU ms/request | errors |",
        "|---|---:|---:|---:|",
        *[
            f"| {r['server']} | {r['concurrency']} | {r['cpu_ms_per_request']:.3f} | "
            f"{r['errors']} |"
            for r in servers
        ],
        "",
        "| HTTP client alone (this process, one request at a time) | CPU ms/request |",
        "|---|---:|",
        *[f"| {k} | {v:.3f} |" for k, v in clients.items()],
        "",
        f"Re-run: `python benchmarks/gateway_cpu_floor.py --requests {args.requests} "
        f"--concurrency {' '.join(map(str, args.concurrency))}`",
    ]
    data = {"meta": meta, "servers": servers, "clients_ms": clients}
    jpath, _ = write_stamped(RESULTS, args.out, data, "\n".join(md))
    print(f"wrote {jpath} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
