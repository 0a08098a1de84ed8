"""Section 3 of benchmarks/bench_hostile.py: slow or idle connections against a gateway.

Per round: normal chat requests (sequential, one client) for `BEFORE_S`, then the same
from the moment a process of its own opens the slow connections at once (4/10 idle, 3/10
dribbling headers, 3/10 dribbling bodies, one byte a second) and waits for the gateway to
close them, until it has seen the last one closed. Rounds alternate without/with, so a
change in the machine's load falls on both sides; the latencies of all rounds are pooled and compared as ratios (with / without).

Each chat request is placed in the phase of the slow clients it overlapped: `connecting`
(until the last slow connection is open), `trickling`, `closing` (from the first to the last
close, 50 ms either side), `after`. The CPU seconds of the gateway, the slow clients and this
client are read per window (/proc, getrusage), to tell the gateway's own cost from the
competition for the cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from benchmarks import procfs

BEFORE_S = 5.0
PHASES = ("connecting", "trickling", "closing", "after")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = procfs.stat_fields(pid)
    assert fields is not None, f"process {pid} is gone"
    return procfs.cpu_s(fields)


async def latencies(
    url: str, chat: dict[str, Any], until: Callable[[], bool]
) -> list[tuple[float, float]]:
    """(start on the monotonic clock, milliseconds) of sequential chat requests."""
    out: list[tuple[float, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        while not until():
            t = time.monotonic()
            r = await c.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
            out.append((t, (time.monotonic() - t) * 1000))
    return out


# -- the slow clients' process --------------------------------------------------------------
async def _slow_client(host: str, port: int, kind: str, limit_s: float) -> dict[str, Any]:
    """When this connection was asked for, open, and closed (monotonic clock, shared by
    the processes of one machine); closed by the server or given up at `limit_s`.
    Connecting 1,000 at once queues in this client, so the server's timer may start up to
    the connect time before `opened`: the true close time lies between the two figures."""
    asked = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    opened = time.monotonic()
    if kind == "header":
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
    elif kind == "body":
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{")  # fmt: skip
    closed = asyncio.create_task(reader.read())
    while not closed.done() and time.monotonic() - opened < limit_s:
        if kind != "idle":
            try:
                writer.write(b"a")  # one byte a second: slowloris
            except (ConnectionError, RuntimeError):  # closed under us (uvloop: RuntimeError)
                await asyncio.wait({closed}, timeout=1.0)
                break
        await asyncio.wait({closed}, timeout=1.0)
    ok = closed.done()
    if not ok:
        closed.cancel()
    else:
        closed.exception()  # retrieved: a reset (our bytes left unread) is a close too
    writer.close()
    return {"kind": kind, "asked": asked, "opened": opened, "closed": time.monotonic(),
            "by_server": ok}  # fmt: skip


async def _slow_clients(url: str, n: int, limit_s: float) -> list[dict[str, Any]]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    k = n // 10
    kinds = ["idle"] * (n - 6 * k) + ["header"] * (3 * k) + ["body"] * (3 * k)
    return list(await asyncio.gather(*(_slow_client(host, int(port), x, limit_s) for x in kinds)))


def worker_main(url: str, n: int, limit_s: float, nice: int) -> None:
    """`bench_hostile.py --slow-worker URL N LIMIT NICE`: says "ready" once imported, then
    prints the clients and its own CPU seconds.

    Slow clients are other machines in a deployment; here they share the 2 cores with the
    gateway and the chat client. Their process costs several times the gateway's CPU for
    the same connections (asyncio streams, 1,000 tasks waking every second), so by default
    it runs at the lowest CPU priority (nice 19) on uvloop: it takes the cores only when the
    gateway and the chat client leave them idle. `--slow-nice 0` measures the competition."""
    os.nice(nice)
    print("ready", flush=True)
    import uvloop

    clients = uvloop.run(_slow_clients(url, n, limit_s))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"clients": clients, "cpu_s": ru.ru_utime + ru.ru_stime}))


# -- one run ----------------------------------------------------------------------------------
def _stats(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    a = np.array(ms)
    return {"n": len(ms), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}  # fmt: skip


def _phase(start: float, ms: float, clients: list[dict[str, Any]]) -> str:
    end = start + ms / 1000
    all_open = max(c["opened"] for c in clients)
    closes = [c["closed"] for c in clients if c["by_server"]] or [float("inf")]
    first_close, last_close = min(closes) - 0.05, max(closes) + 0.05
    if start < all_open:
        return "connecting"
    if end >= first_close and start <= last_close:
        return "closing"
    return "trickling" if end < first_close else "after"


def server_lateness(url: str) -> dict[str, float]:
    """The gateway's own count, sum and max of (deadline expired at - deadline), /metrics."""
    want = {"sage_cp_connection_deadlines_expired_total": "count",
            "sage_cp_connection_deadline_lateness_seconds_total": "sum_s",
            "sage_cp_connection_deadline_lateness_max_seconds": "max_s"}  # fmt: skip
    out = dict.fromkeys(want.values(), float("nan"))
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in want:
            out[want[name]] = float(value)
    return out


def _add_cpu(into: dict[str, float], gateway_pid: int, g0: float, c0: float, t0: float) -> None:
    into["gateway"] += cpu_seconds(gateway_pid) - g0
    into["client"] += time.process_time() - c0
    into["seconds"] += time.monotonic() - t0


async def one_round(
    url: str, gateway_pid: int, chat: dict[str, Any], limit: float, connections: int, nice: int
) -> dict[str, Any]:
    """One round, raw: chat latencies for BEFORE_S without slow connections, then with them
    until the last is closed (each placed in a phase), the slow clients, CPU seconds."""
    cpu = {"before": {"gateway": 0.0, "client": 0.0, "seconds": 0.0},
           "during": {"gateway": 0.0, "client": 0.0, "slow_clients": 0.0, "seconds": 0.0}}  # fmt: skip
    bench = __file__.replace("hostile_slow.py", "bench_hostile.py")
    g0, c0, t0 = cpu_seconds(gateway_pid), time.process_time(), time.monotonic()
    end = t0 + BEFORE_S
    before = await latencies(url, chat, lambda: time.monotonic() > end)
    _add_cpu(cpu["before"], gateway_pid, g0, c0, t0)
    windows = {"without": [t0, time.monotonic()]}
    # The slow clients run in a process of their own, so their work does not show up
    # in this client's measurements (it does compete for the cores). The window opens
    # once that process is ready (its imports take seconds on a loaded machine) and
    # closes when its last connection has been closed.
    worker = await asyncio.create_subprocess_exec(
        sys.executable, bench, "--slow-worker", url, str(connections), str(limit), str(nice),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdout is not None
    assert (await worker.stdout.readline()).strip() == b"ready"
    g0, c0, t0 = cpu_seconds(gateway_pid), time.process_time(), time.monotonic()
    finished = asyncio.Event()
    measuring = asyncio.create_task(latencies(url, chat, finished.is_set))
    out = await worker.stdout.read()
    await worker.wait()
    finished.set()
    lat = await measuring
    windows["with"] = [t0, time.monotonic()]
    _add_cpu(cpu["during"], gateway_pid, g0, c0, t0)
    got = json.loads(out)
    cpu["during"]["slow_clients"] += got["cpu_s"]
    during = [(s, ms, _phase(s, ms, got["clients"])) for s, ms in lat]
    return {"before": before, "during": during, "clients": got["clients"], "cpu_s": cpu,
            "windows": windows}  # fmt: skip


async def slow_run(
    url: str, gateway_pid: int, chat: dict[str, Any], timeouts: dict[str, float],
    connections: int, rounds: int, nice: int = 19,
) -> dict[str, Any]:  # fmt: skip
    limit = 4 * max(timeouts.values())
    late0 = server_lateness(url)
    raw = [await one_round(url, gateway_pid, chat, limit, connections, nice)
           for _ in range(rounds)]  # fmt: skip
    return summarise(raw, timeouts, connections, nice, late0, server_lateness(url))


def summarise(
    raw: list[dict[str, Any]], timeouts: dict[str, float], connections: int, nice: int,
    late0: dict[str, float], late1: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """Rounds pooled: closes per kind, the gateway's lateness between two /metrics reads,
    chat latency without/with and by phase, CPU seconds."""
    before = [x for r in raw for x in r["before"]]
    during = [x for r in raw for x in r["during"]]
    clients = [c for r in raw for c in r["clients"]]
    cpu: dict[str, dict[str, float]] = {}
    for r in raw:
        for window, figures in r["cpu_s"].items():
            into = cpu.setdefault(window, dict.fromkeys(figures, 0.0))
            for k, v in figures.items():
                into[k] += v
    by_kind: dict[str, Any] = {}
    for kind, timeout in (("idle", timeouts["header"]), ("header", timeouts["header"]),
                          ("body", timeouts["body"])):  # fmt: skip
        mine = [c for c in clients if c["kind"] == kind]
        after = np.array([c["closed"] - c["opened"] for c in mine])
        by_kind[kind] = {
            "connections": len(mine),
            "closed_by_server": sum(1 for c in mine if c["by_server"]),
            "close_after_s_p50": float(np.percentile(after, 50)),
            "close_after_s_max": float(after.max()),
            "close_after_s_max_incl_connect": float(max(c["closed"] - c["asked"] for c in mine)),
            "timeout_s": timeout,  # an idle connection is timed by the header timeout
        }
    b, d = _stats([ms for _, ms in before]), _stats([ms for _, ms, _ in during])
    expired = late1["count"] - late0["count"]
    lateness = {"deadlines_expired": expired,
                "mean_ms": (late1["sum_s"] - late0["sum_s"]) / expired * 1000 if expired else None,
                "max_ms_since_start": late1["max_s"] * 1000}  # fmt: skip
    return {
        "connections": connections,
        "rounds": len(raw),
        "slow_clients_nice": nice,
        "by_kind": by_kind,
        "server_lateness": lateness,
        "close_times": [[c["kind"], c["closed"] - c["opened"]] for c in clients],
        "chat_latency_before_ms": b,
        "chat_latency_during_ms": d,
        "ratio_p50": d["p50"] / b["p50"],
        "ratio_p99": d["p99"] / b["p99"],
        "during_by_phase_ms": {p: _stats([ms for _, ms, q in during if q == p]) for p in PHASES},
        "slowest_during": sorted(
            ({"ms": ms, "phase": q} for _, ms, q in during), key=lambda r: -r["ms"]
        )[:5],
        "cpu_s": cpu,
    }


def markdown(s: dict[str, Any]) -> list[str]:
    conns = sum(r["connections"] for r in s["by_kind"].values())
    lines = [f"## {s['connections']:,} slow or idle connections ({s['rounds']} round(s), "
             f"{conns:,} in all)", "",
             "| kind | connections | closed by the gateway | closed after p50 / max (s) | max incl. connect (s) | timeout (s) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for kind, r in s["by_kind"].items():
        lines.append(
            f"| {kind} | {r['connections']} | {r['closed_by_server']} | "
            f"{r['close_after_s_p50']:.2f} / {r['close_after_s_max']:.2f} | "
            f"{r['close_after_s_max_incl_connect']:.2f} | {r['timeout_s']:g} |"
        )
    late = s["server_lateness"]
    if late["mean_ms"] is None or late["mean_ms"] != late["mean_ms"]:  # no metric (older build)
        lines += ["", "The gateway's own lateness figures: not exported by this build."]
    else:
        lines += ["", f"On the gateway's own clock (its /metrics): {late['deadlines_expired']:.0f} "
                  f"deadlines expired, each on average {late['mean_ms']:.1f} ms after its "
                  f"deadline; the largest since the gateway started (earlier sections of the run "
                  f"included) {late['max_ms_since_start']:.1f} ms. Client-side figures "
                  "above: from the moment this client saw its connection open (later than the "
                  "gateway's accept when 1,000 connect at once) and from when it asked to "
                  "connect (earlier); the gateway's deadline lies between."]  # fmt: skip
    b, d = s["chat_latency_before_ms"], s["chat_latency_during_ms"]
    lines += ["", f"Normal chat latency (sequential, rounds pooled): without p50 {b['p50']:.1f} "
              f"ms / p99 {b['p99']:.1f} ms (n={b['n']}); with the slow connections p50 "
              f"{d['p50']:.1f} ms / p99 {d['p99']:.1f} ms (n={d['n']}); ratio with/without: "
              f"p50 **{s['ratio_p50']:.2f}**, p99 **{s['ratio_p99']:.2f}**.", "",
              "| phase of the slow clients | n | p50 (ms) | p99 (ms) | max (ms) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for phase, r in s["during_by_phase_ms"].items():
        if r["n"]:
            lines.append(f"| {phase} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | "
                         f"{r['max']:.1f} |")  # fmt: skip
    c = s["cpu_s"]
    bw, dw = c["before"], c["during"]
    lines += ["", f"The slow clients' process ran at nice {s.get('slow_clients_nice', 0)} "
              "(19: it takes the cores only when the gateway and the chat client leave them "
              "idle, as clients on other machines would; 0: it competes with them)."]  # fmt: skip
    lines += ["", "CPU seconds per second of window (2 cores = 2.0): without: gateway "
              f"{bw['gateway'] / bw['seconds']:.2f}, chat client {bw['client'] / bw['seconds']:.2f}; "
              f"with: gateway {dw['gateway'] / dw['seconds']:.2f}, chat client "
              f"{dw['client'] / dw['seconds']:.2f}, slow clients' process "
              f"{dw['slow_clients'] / dw['seconds']:.2f}.", ""]  # fmt: skip
    return lines
