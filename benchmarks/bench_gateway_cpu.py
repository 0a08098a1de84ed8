"""Gateway CPU per request: `sage-cp serve` vs PyPI vllm-router 0.1.17 (Rust), in one run.

What it measures (issue 16, "Less CPU per request"): the CPU time (user + system, from
/proc, summed over every process of the target's session, so `--workers N`'s scheduling
process and workers count) that a gateway spends per request it served, against 2 zero-latency simulated
instances (`sage-cp sim --time-scale 0`), for non-streamed and streamed `/v1/completions`
(16 tokens), at closed-loop concurrency 1, 16 and 64, a fixed number of requests per point.
CPU time ratios measured in one run hold on a loaded machine; wall latency and req/s do not,
so they are reported but only mean something on a quiet machine.

The load generator (this process, asyncio + uvloop, raw-socket HTTP/1.1 keep-alive, one
connection per user; `bench_gateway.py`'s client) reports its own CPU time separately.
`direct` (the client talks to the instances itself) is the baseline for added latency.

    python benchmarks/bench_gateway_cpu.py [--requests 3000] [--concurrency 1 16 64]
        [--targets direct sage-cp sage-cp-workers sage-cp-replicas sage-cp-plain-upstream
                   vllm-router] [--workers 2] [--rounds K]

`sage-cp-plain-upstream` is `sage-cp serve --no-upstream-streaming`: what streaming every
request from the instance (for TTFT) costs the gateway per request.

The two designs for many processes on one host (docs/scale-out.md), each against one
process in the same run: `sage-cp-workers` is `sage-cp serve --workers N` (one scheduling
process + N forwarding workers); `sage-cp-replicas` is N independent `sage-cp serve
--redis-url` processes sharing state through a local redis-server (needs `redis-server`),
the client spreading its connections over them. CPU is counted over every process of each.

Tracing cost (issue 13): `--tracing` measures `sage-cp serve` with tracing off, on at
sampling ratio 0.1 and on at 1.0 (OTLP/gRPC to a local receiver process,
benchmarks/otlp_sink.py), in one run; the added gateway CPU per request is in the
"Tracing cost" table (stem gateway_cpu_tracing).

Before/after a change (A/B in one run): `--baseline TREE` adds `sage-cp-base` (and
`sage-cp-workers-base` when `sage-cp-workers` is a target): the same commands run from
another checkout with its own virtualenv (TREE/.venv, `pip install -e TREE`), e.g. a
`git worktree add --detach` of the commit before. With `--rounds K` the targets are measured
in a rotated order each round, so load changes fall on both alike; the "Before/after"
table gives each point's CPU ratio to its baseline.

Writes benchmarks/results/gateway_cpu.{json,md,png} (stem set by --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_gateway import (
    CLI,
    ROUTER_VERSION,
    Procs,
    _read_response,
    free_port,
    machine,
    router_argv,
    start_sim_fleet,
    wait_http,
)
from benchmarks.procfs import cpu_s, processes
from sage_cp_plugin.virtual.provenance import write_stamped

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def session_cpu_s(sid: int) -> float:
    """User + system CPU seconds of every live process in session `sid` (plus what they
    collected from children that exited)."""
    return sum(session_cpu_by_role(sid).values())


def _role(pid: str) -> str:
    """`scheduler`/`worker` for the children of `serve --workers N`, else `main`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "main"
    marker = b"sage_cp_plugin.entrypoints.gateway.workers.child"
    return argv[argv.index(marker) + 1].decode() if marker in argv else "main"


def session_cpu_by_role(sid: int) -> dict[str, float]:
    """`session_cpu_s` split by process role (main, scheduler, worker)."""
    total: dict[str, float] = {}
    for pid, fields in processes():
        if int(fields[3]) != sid:
            continue
        role = _role(str(pid))
        total[role] = total.get(role, 0.0) + cpu_s(fields)
    return total


def body(stream: bool) -> bytes:
    return json.dumps(
        {"model": "sim-model", "prompt": "hello world", "max_tokens": 16, "stream": stream}
    ).encode()


@dataclass
class Point:
    target: str
    streamed: bool
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    target_cpu_s: float
    cpu_ms_per_request: float
    client_cpu_ms_per_request: float
    # By process role for `--workers N` (main = the supervisor there, the server otherwise).
    cpu_ms_per_request_by_role: dict[str, float] | None = None
    # With --rounds K: every round's CPU ms/request (this point is the median round).
    cpu_ms_per_request_rounds: list[float] | None = None


async def _user(
    endpoint: tuple[str, int], req: bytes, left: list[int], lat: list[float], errs: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(*endpoint)
    clock = time.perf_counter
    try:
        while left[0] > 0:
            left[0] -= 1
            t0 = clock()
            writer.write(req)
            status = await _read_response(reader)
            if status == 200:
                lat.append(clock() - t0)
            else:
                errs[0] += 1
    finally:
        writer.close()


async def drive(eps: list[tuple[str, int]], stream: bool, conc: int, n: int) -> tuple:
    data = body(stream)
    reqs = [
        (
            f"POST /v1/completions HTTP/1.1\r\nHost: {h}:{p}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        + data
        for h, p in eps
    ]
    left, lat, errs = [n], [], [0]
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_user(eps[i % len(eps)], reqs[i % len(eps)], left, lat, errs) for i in range(conc))
    )
    return lat, errs[0], time.perf_counter() - t0


def cpu_by_role(sessions: dict[int, str]) -> dict[str, float]:
    """CPU seconds of every session, by role: a session's own label (`replica`, `redis`),
    or the child role (`scheduler`, `worker`) inside it."""
    out: dict[str, float] = {}
    for sid, label in sessions.items():
        for role, cpu in session_cpu_by_role(sid).items():
            key = label if role == "main" else role
            out[key] = out.get(key, 0.0) + cpu
    return out


def measure(target: str, eps: list[tuple[str, int]], sessions: dict[int, str], stream: bool,
            conc: int, n: int) -> Point:  # fmt: skip
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(drive(eps, stream, conc, max(conc * 20, n // 10)))  # warm-up, not counted
    roles0 = cpu_by_role(sessions)
    me0 = time.process_time()
    lat, errors, wall = runner(drive(eps, stream, conc, n))
    me = time.process_time() - me0
    roles1 = cpu_by_role(sessions)
    # A process that restarted mid-point would make a role's difference meaningless; none
    # does in a healthy run (the server's /health counts restarts).
    by_role = {r: roles1[r] - roles0.get(r, 0.0) for r in roles1}
    cpu = sum(by_role.values())
    lat.sort()
    k = len(lat)
    return Point(
        target=target,
        streamed=stream,
        concurrency=conc,
        requests=k,
        errors=errors,
        wall_s=wall,
        rps=k / wall,
        p50_ms=lat[k // 2] * 1000 if k else float("nan"),
        p99_ms=lat[min(k - 1, int(0.99 * k))] * 1000 if k else float("nan"),
        target_cpu_s=cpu,
        cpu_ms_per_request=cpu / max(k, 1) * 1000,
        client_cpu_ms_per_request=me / max(k, 1) * 1000,
        cpu_ms_per_request_by_role={r: c / max(k, 1) * 1000 for r, c in sorted(by_role.items())}
        if len(by_role) > 1
        else None,
    )


BASE_SUFFIX = "-base"


def ab_rows(points: list[Point]) -> list[dict[str, Any]]:
    """Each target against its `--baseline` twin, same mode, same run."""
    by = {(p.target, p.streamed, p.concurrency): p for p in points}
    rows = []
    for p in points:
        base = by.get((p.target + BASE_SUFFIX, p.streamed, p.concurrency))
        if base is None:
            continue
        rows.append(
            {
                "target": p.target,
                "streamed": p.streamed,
                "concurrency": p.concurrency,
                "base_cpu_ms_per_request": base.cpu_ms_per_request,
                "cpu_ms_per_request": p.cpu_ms_per_request,
                "cpu_ratio": p.cpu_ms_per_request / base.cpu_ms_per_request,
                "base_rounds": base.cpu_ms_per_request_rounds,
                "rounds": p.cpu_ms_per_request_rounds,
                "base_rps": base.rps,
                "rps": p.rps,
                "base_by_role": base.cpu_ms_per_request_by_role,
                "by_role": p.cpu_ms_per_request_by_role,
            }
        )
    return rows


def ab_table(points: list[Point]) -> list[str]:
    rows = ab_rows(points)
    if not rows:
        return []
    out = [
        "",
        "## Before/after (this tree vs `--baseline`, same run, rounds alternated)",
        "",
        "| target | streamed | conc. | before CPU ms/req | after CPU ms/req | after/before "
        "| before rounds | after rounds | by role before | by role after |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|",
    ]

    def roles(r: dict[str, float] | None) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in (r or {}).items()) or "-"

    for r in rows:
        out.append(
            f"| {r['target']} | {'yes' if r['streamed'] else 'no'} | {r['concurrency']} "
            f"| {r['base_cpu_ms_per_request']:.3f} | {r['cpu_ms_per_request']:.3f} "
            f"| {r['cpu_ratio']:.2f} | {_rounds(r['base_rounds'])} | {_rounds(r['rounds'])} "
            f"| {roles(r['base_by_role'])} | {roles(r['by_role'])} |"
        )
    return out


def median_round(rounds: list[Point]) -> Point:
    """The round with the median CPU per request (one measured round, not an average),
    carrying every round's value."""
    ordered = sorted(rounds, key=lambda p: p.cpu_ms_per_request)
    mid = ordered[(len(ordered) - 1) // 2]
    if len(rounds) > 1:
        mid.cpu_ms_per_request_rounds = [p.cpu_ms_per_request for p in rounds]
    return mid


# `sage-cp serve --no-upstream-streaming`: non-streamed callers' requests are sent to the
# instance non-streamed (one body instead of a chunk per token; TTFT is then not measured),
# what the upstream streaming costs per request.
PLAIN_UPSTREAM = "sage-cp-plain-upstream"

# Traced variants of `sage-cp serve`: target name -> sampling ratio.
TRACED = {"sage-cp-traced-0.1": 0.1, "sage-cp-traced-1.0": 1.0}


def wait_port(port: int, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def tracing_rows(points: list[Point]) -> list[dict[str, Any]]:
    """Added gateway CPU per request of each traced variant over tracing off, same mode."""
    off = {(p.streamed, p.concurrency): p for p in points if p.target == "sage-cp"}
    rows = []
    for p in points:
        base = off.get((p.streamed, p.concurrency))
        if p.target not in TRACED or base is None:
            continue
        rows.append(
            {
                "target": p.target,
                "ratio": TRACED[p.target],
                "streamed": p.streamed,
                "concurrency": p.concurrency,
                "off_cpu_ms_per_request": base.cpu_ms_per_request,
                "cpu_ms_per_request": p.cpu_ms_per_request,
                "added_cpu_ms_per_request": p.cpu_ms_per_request - base.cpu_ms_per_request,
                "added_fraction": p.cpu_ms_per_request / base.cpu_ms_per_request - 1
                if base.cpu_ms_per_request > 0
                else None,
                "off_rounds": base.cpu_ms_per_request_rounds,
                "rounds": p.cpu_ms_per_request_rounds,
            }
        )
    return rows


def _rounds(values: list[float] | None) -> str:
    return "-" if not values else " ".join(f"{v:.2f}" for v in values)


def summarize(points: list[Point]) -> list[dict[str, Any]]:
    by = {(p.target, p.streamed, p.concurrency): p for p in points}
    rows = []
    for p in points:
        if p.target in ("direct", "vllm-router") or p.target in TRACED:
            continue
        r = by.get(("vllm-router", p.streamed, p.concurrency))
        d = by.get(("direct", p.streamed, p.concurrency))
        rows.append(
            {
                "target": p.target,
                "streamed": p.streamed,
                "concurrency": p.concurrency,
                "cpu_ms_per_request": p.cpu_ms_per_request,
                "router_cpu_ms_per_request": r.cpu_ms_per_request if r else None,
                "cpu_vs_router": p.cpu_ms_per_request / r.cpu_ms_per_request if r else None,
                "added_p50_ms": p.p50_ms - d.p50_ms if d else None,
                "router_added_p50_ms": r.p50_ms - d.p50_ms if (r and d) else None,
            }
        )
    return rows


def markdown(meta: dict[str, Any], points: list[Point], rows: list[dict[str, Any]]) -> str:
    m = meta["machine"]
    out = [
        "# Gateway CPU per request: `sage-cp serve` vs vllm-router, same run",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average at start "
        f"{meta['loadavg']} (CPU-time ratios hold under load, wall latency and req/s do not).",
        f"Workload: {meta['workload']}",
        f"Targets: {meta['targets']}",
        "",
        "| target | streamed | conc. | requests | errors | req/s | p50 ms | p99 ms "
        "| gateway CPU ms/req | client CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        cpu = f"{p.cpu_ms_per_request:.3f}" if p.target != "direct" else "-"
        out.append(
            f"| {p.target} | {'yes' if p.streamed else 'no'} | {p.concurrency} | {p.requests} "
            f"| {p.errors} | {p.rps:.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {cpu} "
            f"| {p.client_cpu_ms_per_request:.3f} |"
        )
    out += [
        "",
        "## Ratios to vllm-router (goal: CPU <= 3x, stretch 2x; added p50 at c=1 <= 0.6 ms)",
        "",
        "| target | streamed | conc. | CPU ms/req | router CPU ms/req | ratio | added p50 ms "
        "| router added p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in rows:
        out.append(
            f"| {r['target']} | {'yes' if r['streamed'] else 'no'} | {r['concurrency']} "
            f"| {r['cpu_ms_per_request']:.3f} | {f(r['router_cpu_ms_per_request'], '.3f')} "
            f"| {f(r['cpu_vs_router'], '.2f')} | {f(r['added_p50_ms'], '.2f')} "
            f"| {f(r['router_added_p50_ms'], '.2f')} |"
        )
    traced = tracing_rows(points)
    if traced:
        out += [
            "",
            "## Tracing cost (sage-cp serve, OTLP/gRPC to a local receiver; same run)",
            "",
            "| variant | ratio | streamed | conc. | off CPU ms/req | on CPU ms/req | added ms/req "
            "| added % | off rounds | on rounds |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for t in traced:
            frac = t["added_fraction"]
            out.append(
                f"| {t['target']} | {t['ratio']:g} | {'yes' if t['streamed'] else 'no'} "
                f"| {t['concurrency']} | {t['off_cpu_ms_per_request']:.3f} "
                f"| {t['cpu_ms_per_request']:.3f} | {t['added_cpu_ms_per_request']:+.3f} "
                f"| {'-' if frac is None else format(frac * 100, '+.0f')} "
                f"| {_rounds(t['off_rounds'])} | {_rounds(t['rounds'])} |"
            )
    out += workers_table(points)
    out += ab_table(points)
    out += ["", f"Re-run on a quiet machine: `{meta['command']}`", ""]
    return "\n".join(out)


def workers_table(points: list[Point]) -> list[str]:
    """The multi-process designs against one process, same run: throughput and CPU per
    request, split by process role."""
    by = {(p.target, p.streamed, p.concurrency): p for p in points}
    pairs = [(by[("sage-cp", p.streamed, p.concurrency)], p) for p in points
             if p.target in ("sage-cp-workers", "sage-cp-replicas")
             and ("sage-cp", p.streamed, p.concurrency) in by]  # fmt: skip
    if not pairs:
        return []
    out = [
        "",
        "## Many processes vs one (goal: throughput >= 1.7x with 2 workers on 2 cores)",
        "",
        "`sage-cp-workers`: `serve --workers N` (a scheduling process + N forwarding workers); "
        "`sage-cp-replicas`: N independent `serve --redis-url` processes sharing state through "
        "a local redis-server, the client spreading its connections over them.",
        "",
        "| design | streamed | conc. | req/s 1 process | req/s N | throughput ratio "
        "| CPU ms/req 1 process | CPU ms/req N | by process role | client CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for one, many in pairs:
        roles = many.cpu_ms_per_request_by_role or {}
        split = ", ".join(f"{r} {v:.3f}" for r, v in roles.items()) or "-"
        out.append(
            f"| {many.target} | {'yes' if one.streamed else 'no'} | {one.concurrency} "
            f"| {one.rps:.0f} | {many.rps:.0f} | {many.rps / one.rps:.2f} "
            f"| {one.cpu_ms_per_request:.3f} | {many.cpu_ms_per_request:.3f} | {split} "
            f"| {many.client_cpu_ms_per_request:.3f} |"
        )
    return out


def start_replicas(procs: Procs, cfg: Path, n: int) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """Design (a) on one host: n `sage-cp serve --redis-url` replicas and their redis-server."""
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit(
            "the sage-cp-replicas target needs redis-server (apt-get install redis-server)"
        )
    rport = free_port()
    rproc = procs.start([redis, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no"])  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", rport), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.05)
    eps: list[tuple[str, int]] = []
    sessions = {rproc.pid: "redis"}
    for i in range(n):
        port = free_port()
        proc = procs.start([*CLI, "serve", "--config", str(cfg), "--port", str(port),
                            "--redis-url", f"redis://127.0.0.1:{rport}/0",
                            "--replica-id", f"r{i}"])  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/health")
        eps.append(("127.0.0.1", port))
        sessions[proc.pid] = "replica"
    return eps, sessions


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [
        f"{r['target']}\n{'stream' if r['streamed'] else 'plain'} c={r['concurrency']}"
        for r in rows
    ]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["cpu_ms_per_request"] for r in rows], 0.4, label="sage-cp")
    ax.bar(
        [x + 0.2 for x in xs],
        [r["router_cpu_ms_per_request"] or 0 for r in rows],
        0.4,
        label=f"vllm-router {ROUTER_VERSION}",
    )
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("gateway CPU ms per request")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=3000, help="requests measured per point")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--targets", nargs="+", default=["direct", "sage-cp", "vllm-router"],
                    choices=["direct", "sage-cp", "sage-cp-workers", "sage-cp-replicas",
                             PLAIN_UPSTREAM, "vllm-router", *TRACED])  # fmt: skip
    ap.add_argument("--workers", type=int, default=2,
                    help="processes of the sage-cp-workers and sage-cp-replicas targets")  # fmt: skip
    ap.add_argument("--tracing", action="store_true",
                    help="targets: sage-cp with tracing off, at ratio 0.1 and at 1.0")  # fmt: skip
    ap.add_argument("--streamed", choices=["both", "no", "yes"], default="both")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every point K times, targets in a rotated order each round; "
                    "report the median round (for a loaded machine)")  # fmt: skip
    ap.add_argument("--baseline", type=Path, default=None, metavar="TREE",
                    help="also run sage-cp (and sage-cp-workers) from this checkout, with "
                    "TREE/.venv/bin/python, as `<target>-base`")  # fmt: skip
    ap.add_argument("--out", default="gateway_cpu")
    args = ap.parse_args()
    if args.tracing:
        args.targets = ["sage-cp", *TRACED]
        if args.out == "gateway_cpu":
            args.out = "gateway_cpu_tracing"
    if args.requests < 1 or args.rounds < 1 or any(c < 1 for c in args.concurrency):
        ap.error("--requests, --rounds and --concurrency must be positive")
    if args.workers < 2:
        ap.error("--workers must be 2 or more (1 is the sage-cp target)")
    base_python: Path | None = None
    if args.baseline is not None:
        base_python = args.baseline.resolve() / ".venv" / "bin" / "python"
        if not base_python.exists():
            ap.error(f"--baseline: {base_python} does not exist (python3 -m venv "
                     f"{args.baseline}/.venv && {args.baseline}/.venv/bin/pip install -e "
                     f"{args.baseline})")  # fmt: skip
        args.targets += [t + BASE_SUFFIX for t in args.targets
                         if t in ("sage-cp", "sage-cp-workers")]  # fmt: skip

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gwcpu-"))
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    points: list[Point] = []
    try:
        sims, cfg = start_sim_fleet(procs, 2, tmp)
        sink_port = None
        if any(t in TRACED for t in args.targets):
            sink_port = free_port()
            procs.start([sys.executable, str(ROOT / "benchmarks" / "otlp_sink.py"), str(sink_port)])
            wait_port(sink_port)
        targets: dict[str, tuple[list[tuple[str, int]], dict[int, str]]] = {}
        for name in args.targets:
            if name == "direct":
                targets[name] = (sims, {})
                continue
            if name == "sage-cp-replicas":
                targets[name] = start_replicas(procs, cfg, args.workers)
                continue
            port = free_port()
            cwd: Path | None = None
            if name == "vllm-router":
                argv = router_argv(sims, port)
            else:
                cli = CLI
                if name.endswith(BASE_SUFFIX):
                    assert base_python is not None and args.baseline is not None
                    # `python -m` imports from the working directory first: run in TREE.
                    cli, cwd = [str(base_python), *CLI[1:]], args.baseline.resolve()
                argv = [*cli, "serve", "--config", str(cfg), "--port", str(port)]
                if name in TRACED:
                    argv += ["--otlp-traces-endpoint", f"http://127.0.0.1:{sink_port}",
                             "--trace-sampling-ratio", str(TRACED[name])]  # fmt: skip
                if name == PLAIN_UPSTREAM:
                    argv.append("--no-upstream-streaming")
                if name.startswith("sage-cp-workers"):
                    argv += ["--workers", str(args.workers)]
            proc = procs.start(argv, cwd=cwd)
            try:  # a loaded machine can take minutes to start a gateway and its workers
                wait_http(f"http://127.0.0.1:{port}/health", timeout=300)
            except RuntimeError as exc:
                raise SystemExit(f"target {name}: {exc}") from None
            targets[name] = ([("127.0.0.1", port)], {proc.pid: "main"})  # session id = its pid
        modes = {"both": [False, True], "no": [False], "yes": [True]}[args.streamed]
        names = list(targets)
        for stream in modes:
            for c in args.concurrency:
                rounds: dict[str, list[Point]] = {n: [] for n in names}
                for k in range(args.rounds):
                    # Each round in another order: a load change on a shared machine falls
                    # on every target alike, not on whichever is measured last.
                    for name in names[k % len(names) :] + names[: k % len(names)]:
                        eps, sessions = targets[name]
                        pt = measure(name, eps, sessions, stream, c, args.requests)
                        rounds[name].append(pt)
                        print(
                            f"{name:<16} stream={stream!s:<5} c={c:<3} {pt.rps:7.0f} req/s "
                            f"p50 {pt.p50_ms:6.2f} ms  cpu {pt.cpu_ms_per_request:.3f} ms/req  "
                            f"client {pt.client_cpu_ms_per_request:.3f}  errors {pt.errors}",
                            flush=True,
                        )
                points += [median_round(rounds[n]) for n in names]
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = summarize(points)
    meta = {
        "machine": machine(),
        "loadavg": " ".join(loadavg),
        "workload": f"{args.requests} requests per point (after an uncounted warm-up)"
        + (
            f", each point measured in {args.rounds} rounds (targets in a rotated order), "
            "the median round reported"
            if args.rounds > 1
            else ""
        )
        + ", "
        "POST /v1/completions 'hello world' max_tokens 16, streamed and not, 2 zero-latency "
        "simulated instances (one `sage-cp sim --time-scale 0` process)",
        "targets": "sage-cp serve (fifo, round_robin, defaults otherwise; sage-cp-workers: "
        f"the same with --workers {args.workers}); vllm-router "
        f"{ROUTER_VERSION} (PyPI, --policy round_robin); direct = client to the instances; "
        "sage-cp-traced-R: sage-cp with --otlp-traces-endpoint (local OTLP/gRPC receiver) "
        "and --trace-sampling-ratio R",
        "command": "python benchmarks/bench_gateway_cpu.py " + " ".join(sys.argv[1:]),
    }
    write_stamped(
        RESULTS,
        args.out,
        {
            "meta": meta,
            "points": [asdict(p) for p in points],
            "summary": rows,
            "tracing": tracing_rows(points),
            "before_after": ab_rows(points),
        },
        markdown(meta, points, rows),
    )
    if any(r["router_cpu_ms_per_request"] for r in rows):
        plot(rows, RESULTS / f"{args.out}.png")
    print(markdown(meta, points, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
