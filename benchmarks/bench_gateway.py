"""Gateway overhead: direct vs `sage-cp serve` vs PyPI vllm-router 0.1.17 (Rust), in one run.

Workload: non-streaming `/v1/completions` (`max_tokens` 16, a 2-word prompt) against the same
zero-latency simulated instances (`sage-cp sim --time-scale 0`, one process serving both),
at closed-loop concurrency 1, 16 and 64, each for a fixed duration after a warm-up.
Targets: direct (connections spread round-robin over the instances), `sage-cp serve`
(separate process; fifo policy, round_robin router) and vllm-router (`--policy round_robin`,
in its own virtualenv, created here when missing).
Load generator: this process, asyncio (+uvloop when installed) with a minimal HTTP/1.1
keep-alive client on raw sockets (one connection per concurrent user), far cheaper per
request than httpx, so that the numbers measure the servers rather than the client.

    python benchmarks/bench_gateway.py [--duration 5] [--concurrency 1 16 64]

Writes benchmarks/results/gateway.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sage_cp_plugin.virtual.provenance import write_stamped

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ROUTER_VERSION = "0.1.17"
ROUTER_VENV_CANDIDATES = [
    Path(os.environ.get("SAGE_CP_ROUTER_VENV", ""))
    if os.environ.get("SAGE_CP_ROUTER_VENV")
    else None,
    Path.home() / ".cache" / "sage-cp" / "vllm-router-venv",
]
# The gateway twice: as configured by default (every request streamed from the instance, so
# TTFT/TPOT are measured) and with --no-upstream-streaming (one plain upstream call).
GATEWAYS = {"sage-cp": [], "sage-cp-plain": ["--no-upstream-streaming"]}
BODY = json.dumps({"model": "sim-model", "prompt": "hello world", "max_tokens": 16}).encode()


# -- processes ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consecutive_free_ports(n: int) -> int:
    """A first port such that it and the next n-1 are free (`sage-cp sim` uses a range)."""
    for _ in range(100):
        first = free_port()
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", first + i))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def wait_http(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready in {timeout:.0f}s")


def router_binary() -> Path:
    """vllm-router in its own virtualenv (it pins its own dependencies)."""
    for venv in [c for c in ROUTER_VENV_CANDIDATES if c is not None]:
        exe = venv / "bin" / "vllm-router"
        if exe.exists():
            return exe
    venv = Path.home() / ".cache" / "sage-cp" / "vllm-router-venv"
    print(f"creating {venv} with vllm-router=={ROUTER_VERSION} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"vllm-router=={ROUTER_VERSION}"], check=True
    )
    return venv / "bin" / "vllm-router"


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw
        )
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


# -- load generator ----------------------------------------------------------------------
@dataclass
class Run:
    target: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def _request(host: str, port: int, path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\nAccept: application/json\r\n\r\n"
    ).encode() + BODY


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if m:
        await reader.readexactly(int(m.group(1)))
    elif re.search(rb"(?i)\r\ntransfer-encoding:\s*chunked", head):
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _user(
    endpoint: tuple[str, int], path: str, stop_at: float, record_from: float, lat: list[float]
) -> int:
    host, port = endpoint
    reader, writer = await asyncio.open_connection(host, port)
    req = _request(host, port, path)
    errors = 0
    clock = time.perf_counter
    try:
        while True:
            t0 = clock()
            if t0 >= stop_at:
                break
            writer.write(req)
            status = await _read_response(reader)
            t1 = clock()
            if t0 >= record_from:
                if status == 200:
                    lat.append(t1 - t0)
                else:
                    errors += 1
    finally:
        writer.close()
    return errors


async def measure(
    target: str, endpoints: list[tuple[str, int]], concurrency: int, duration: float, warmup: float
) -> Run:
    lat: list[float] = []
    now = time.perf_counter()
    record_from, stop_at = now + warmup, now + warmup + duration
    errors = await asyncio.gather(
        *(
            _user(endpoints[i % len(endpoints)], "/v1/completions", stop_at, record_from, lat)
            for i in range(concurrency)
        )
    )
    lat.sort()
    n = len(lat)

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return Run(
        target=target,
        concurrency=concurrency,
        requests=n,
        errors=sum(errors),
        duration_s=duration,
        rps=n / duration,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        mean_ms=(sum(lat) / n * 1000) if n else float("nan"),
    )


# -- report --------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    by = {(r.target, r.concurrency): r for r in runs}
    rows = []
    for c in sorted({r.concurrency for r in runs}):
        d, v = by.get(("direct", c)), by.get(("vllm-router", c))
        if d is None:
            continue
        for t in ["vllm-router", *GATEWAYS]:
            g = by.get((t, c))
            if g is None:
                continue
            row: dict[str, Any] = {
                "target": t,
                "concurrency": c,
                "added_p50_ms": g.p50_ms - d.p50_ms,
                "added_p99_ms": g.p99_ms - d.p99_ms,
                "rps": g.rps,
                "rps_vs_direct": g.rps / d.rps,
            }
            if v is not None:
                row["rps_vs_router"] = g.rps / v.rps
                row["added_p50_vs_router"] = (g.p50_ms - d.p50_ms) / max(v.p50_ms - d.p50_ms, 1e-9)
            rows.append(row)
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """Goal of the issue: >= vllm-router's throughput and <= 0.5 ms added p50."""
    lines = ["## Goal (>= vllm-router's req/s, <= 0.5 ms added p50)", ""]
    for row in rows:
        if row["target"] == "vllm-router":
            continue
        rps_ok = row.get("rps_vs_router", 0.0) >= 1.0
        p50_ok = row["added_p50_ms"] <= 0.5
        lines.append(
            f"- {row['target']} c={row['concurrency']}: throughput "
            f"{'met' if rps_ok else 'MISSED'} ({row.get('rps_vs_router', float('nan')):.2f}x "
            f"vllm-router), added p50 {'met' if p50_ok else 'MISSED'} "
            f"({row['added_p50_ms']:.2f} ms)"
        )
    return "\n".join(lines)


def markdown(meta: dict[str, Any], runs: list[Run], rows: list[dict[str, Any]]) -> str:
    m = meta["machine"]
    out = [
        "# Gateway overhead: direct vs `sage-cp serve` vs vllm-router",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}. All processes "
        "(simulated instances, gateway or router, load generator) share these cores.",
        f"Workload: {meta['workload']}",
        f"Baseline: {meta['baseline']}",
        f"Load generator: {meta['load_generator']}",
        f"Gateway: {meta['gateway']}",
        "",
        "## Raw measurements",
        "",
        "| target | concurrency | requests | errors | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        out.append(
            f"| {r.target} | {r.concurrency} | {r.requests} | {r.errors} | {r.rps:.0f} | "
            f"{r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} |"
        )
    out += [
        "",
        "## Added latency and throughput ratios",
        "",
        "| target | conc. | added p50 ms | added p99 ms | req/s | req/s ÷ direct "
        "| req/s ÷ vllm-router | added p50 ÷ vllm-router's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    for row in rows:
        out.append(
            f"| {row['target']} | {row['concurrency']} | {row['added_p50_ms']:.2f} "
            f"| {row['added_p99_ms']:.2f} | {row['rps']:.0f} | {row['rps_vs_direct']:.2f} "
            f"| {row.get('rps_vs_router', nan):.2f} | {row.get('added_p50_vs_router', nan):.1f} |"
        )
    out += ["", meta.get("verdict", ""), ""]
    return "\n".join(out)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = ["direct", "vllm-router", *GATEWAYS]
    concs = sorted({r.concurrency for r in runs})
    by = {(r.target, r.concurrency): r for r in runs}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.8 / len(targets)
    for k, (attr, title) in enumerate(
        [("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"), ("rps", "requests/s")]
    ):
        ax = axes[k]
        for j, t in enumerate(targets):
            vals = [getattr(by[(t, c)], attr) if (t, c) in by else 0 for c in concs]
            ax.bar(
                [i + (j - (len(targets) - 1) / 2) * width for i in range(len(concs))],
                vals,
                width,
                label=t,
            )
        ax.set_xticks(range(len(concs)), [f"c={c}" for c in concs])
        ax.set_title(title)
        if k == 0:
            ax.legend()
    fig.suptitle("Zero-latency simulated instances, non-streaming completions (16 tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- main ----------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli"]


def start_sim_fleet(procs: Procs, n: int, tmp: Path) -> tuple[list[tuple[str, int]], Path]:
    """`n` zero-latency simulated instances in one `sage-cp sim` process, waited for, and a
    fleet file listing them (fifo, round_robin, 256 slots each) for `sage-cp serve`."""
    sim_port = consecutive_free_ports(n)
    procs.start([*CLI, "sim", "-n", str(n), "--port", str(sim_port), "--time-scale", "0"])
    sims = [("127.0.0.1", sim_port + i) for i in range(n)]
    for h, p in sims:
        wait_http(f"http://{h}:{p}/health")
    cfg = tmp / "fleet.yaml"
    inst = "\n".join(
        f"  - {{instance_id: sim-{i}, host: {h}, port: {p}, model_name: sim-model, "
        "max_concurrent_requests: 256}"
        for i, (h, p) in enumerate(sims)
    )
    cfg.write_text(
        "scheduling_policy: fifo\nrouting_strategy: round_robin\n"
        f"enable_pd_separation: false\ninstances:\n{inst}\n"
    )
    return sims, cfg


def router_argv(sims: list[tuple[str, int]], port: int) -> list[str]:
    """vllm-router in front of `sims`, round-robin, on `port`."""
    return [str(router_binary()), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *[f"http://{h}:{p}" for h, p in sims],
            "--policy", "round_robin", "--log-level", "error"]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--no-router", action="store_true", help="skip vllm-router")
    ap.add_argument("--out", default="gateway", help="result file stem under benchmarks/results")
    args = ap.parse_args()

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        sims, cfg = start_sim_fleet(procs, args.instances, tmp)
        targets: dict[str, list[tuple[str, int]]] = {"direct": sims}
        for name, extra in GATEWAYS.items():
            gw_port = free_port()
            procs.start([*CLI, "serve", "--config", str(cfg), "--port", str(gw_port), *extra])
            wait_http(f"http://127.0.0.1:{gw_port}/health")
            targets[name] = [("127.0.0.1", gw_port)]
        if not args.no_router:
            rt_port = free_port()
            procs.start(router_argv(sims, rt_port))
            wait_http(f"http://127.0.0.1:{rt_port}/health")
            targets["vllm-router"] = [("127.0.0.1", rt_port)]

        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        runs: list[Run] = []
        for c in args.concurrency:
            for name, eps in targets.items():
                r = runner(measure(name, eps, c, args.duration, args.warmup))
                runs.append(r)
                print(
                    f"{name:<12} c={c:<3} {r.rps:8.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                    f"p99 {r.p99_ms:6.2f} ms  errors {r.errors}",
                    flush=True,
                )
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = summarize(runs)
    meta: dict[str, Any] = {
        "machine": machine(),
        "workload": "closed loop, non-streaming POST /v1/completions, prompt 'hello world', "
        f"max_tokens 16, {args.duration:g} s measured after {args.warmup:g} s warm-up per point, "
        f"{args.instances} zero-latency simulated instances (sage-cp sim --time-scale 0, one process)",
        "baseline": "direct = the load generator talks to the instances itself "
        "(connections round-robin over them); vllm-router "
        f"{ROUTER_VERSION} from PyPI with --policy round_robin",
        "load_generator": "this process: asyncio + uvloop, raw-socket HTTP/1.1 keep-alive, one "
        "connection per concurrent user",
        "gateway": "sage-cp serve (uvicorn, uvloop + httptools when installed), fifo policy, "
        "round_robin router, health monitoring on; the executor streams from the instance "
        "even for non-streaming requests (TTFT/TPOT are measured for every request)",
    }
    meta["verdict"] = verdict(rows)
    stem = RESULTS / args.out
    data = {"meta": meta, "runs": [asdict(r) for r in runs], "summary": rows}
    write_stamped(RESULTS, args.out, data, markdown(meta, runs, rows))
    plot(runs, stem.with_suffix(".png"))
    print(markdown(meta, runs, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
