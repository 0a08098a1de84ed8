"""Hostile clients against `sage-cp serve` (issue 11), measured in real time on loopback.

Target: `sage-cp serve` with the embedded simulated fleet (2 generation + 1 embedding
instance, in the gateway's process), connection timeouts set short so the run is quick:
`--header-timeout 5 --body-timeout 5 --keep-alive 5`. Sections:

1. the 75 hand-made hostile requests (benchmarks/hostile_cases.py): status counts, >= 500,
   plain-text errors, and the instances' circuits afterwards (admin API);
2. large embedding requests: 100k inputs, the largest accepted (2,048), and 8 of those at
   once; peak gateway RSS over idle (sampled every 10 ms from /proc) and `/health` latency
   (polled every 20 ms on one keep-alive connection) while they run;
3. 1,000 slow or idle connections (400 idle, 300 dribbling headers, 300 dribbling bodies):
   when each is closed, against the configured timeouts, and the latency of normal chat
   requests (sequential, one client) without and with them, as ratios, by phase of the
   slow clients, with each process's CPU seconds (benchmarks/hostile_slow.py);
4. a batch job (`sage-cp batch`, 400 lines) whose only generation instance is down (health
   503, every request 500) for 30 s in the middle: lines answered, errors, exit code.

    python benchmarks/bench_hostile.py [--skip-batch] [--small] [--rounds N]
    python benchmarks/bench_hostile.py --only-slow [--small] [--rounds N]

Writes benchmarks/results/hostile.{json,md,png} (`--small`: hostile-small.*, a quick proof
that it runs: 100 slow connections, no batch run, 10 s of overload); `--only-slow` runs
section 3 alone and writes hostile-slow[-small].{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, machine, write_results  # noqa: E402
from benchmarks.hostile_cases import CASES, run_cases  # noqa: E402
from benchmarks.hostile_slow import markdown as slow_markdown  # noqa: E402
from benchmarks.hostile_slow import slow_run, worker_main  # noqa: E402

ADMIN = "bench-admin"
TIMEOUTS = {"header": 5.0, "body": 5.0, "idle": 5.0}
SLOTS = 16  # the generation instance's slots in the overload run
MAX_PENDING = 64  # the gateway's pending bound in the overload run
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_gateway(
    *extra: str,
    short_timeouts: bool = True,
    python: str = sys.executable,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], str]:
    args = [
        python,
        "-m",
        "sage_cp_plugin.entrypoints.cli",
        "serve",
        "--port",
        "0",
        "--admin-key",
        ADMIN,
        *extra,
    ]
    if short_timeouts:
        args += ["--header-timeout", str(TIMEOUTS["header"]), "--body-timeout",
                 str(TIMEOUTS["body"]), "--keep-alive", str(TIMEOUTS["idle"])]  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain
            return proc, m.group(1)
    raise RuntimeError("gateway did not start")


def free_port_pair() -> int:
    import socket

    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def external_fleet(
    gen_slots: int = 100, gen_time_scale: float = 0.02
) -> tuple[list[subprocess.Popen[str]], Path]:
    """2 embedding + 1 generation simulators in processes of their own, and a config (the
    generation instance with `gen_slots` slots, its engine time scaled by `gen_time_scale`)."""
    cli = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "sim"]
    emb, gen = free_port_pair(), free_port_pair()
    procs = [
        subprocess.Popen([*cli, "-n", "2", "--port", str(emb), "--role", "embedding",
                          "--model", "sim-embed", "--time-scale", "0.02"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True),
        subprocess.Popen([*cli, "-n", "1", "--port", str(gen), "--model", "sim-model",
                          "--time-scale", str(gen_time_scale)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True),
    ]  # fmt: skip
    for port in (emb, emb + 1, gen):
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    cfg = Path(tempfile.mkdtemp(prefix="sage-cp-hostile-")) / "fleet.yaml"
    rows = [("e0", emb, "sim-embed", "embedding"), ("e1", emb + 1, "sim-embed", "embedding"),
            ("g0", gen, "sim-model", "general")]  # fmt: skip
    cfg.write_text("scheduling_policy: fifo\ninstances:\n" + "".join(
        f"  - {{instance_id: {i}, host: 127.0.0.1, port: {port}, model_name: {m}, "
        f"instance_type: {t}, max_concurrent_requests: {gen_slots if i == 'g0' else 100}}}\n"
        for i, port, m, t in rows))  # fmt: skip
    return procs, cfg


def circuits(url: str) -> dict[str, bool]:
    r = httpx.get(f"{url}/admin/instances", headers={"authorization": f"Bearer {ADMIN}"})
    data = r.json()
    rows = data if isinstance(data, list) else data.get("instances", data)
    items = rows.values() if isinstance(rows, dict) else rows
    return {i["instance_id"]: bool(i["circuit_open"]) for i in items}


# -- 1. the 75 cases ---------------------------------------------------------------------
def hostile(url: str) -> dict[str, Any]:
    outcomes = asyncio.run(run_cases(url))
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[str(o.status)] = counts.get(str(o.status), 0) + 1
    return {
        "cases": len(CASES),
        "status_counts": dict(sorted(counts.items())),
        "server_errors": [o.case for o in outcomes if o.status >= 500],
        "plain_text_errors": [o.case for o in outcomes if not o.json_error],
        "circuit_open_after": circuits(url),
        "normal_chat_after": httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code,
        "rows": [{"case": o.case, "status": o.status} for o in outcomes],
    }


# -- 2. large embedding requests -----------------------------------------------------------
class Sampler:
    """RSS every 10 ms and /health latency every 20 ms, each from its own thread; the load
    runs in a process of its own (`--embed-worker`): threads share this process's GIL, so
    the load generator's JSON work would otherwise show up as gateway latency."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.rss: list[tuple[float, float]] = []
        self.health: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()

    def _rss_loop(self) -> None:
        while not self._stop.is_set():
            self.rss.append((time.monotonic() - self.t0, rss_mib(self.pid)))
            self._stop.wait(0.01)

    def _health_loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self._stop.is_set():
                t = time.monotonic()
                r = c.get("/health")
                self.health.append((t - self.t0, (time.monotonic() - t) * 1000, r.status_code))
                self._stop.wait(0.02)

    async def during(self, work: Any) -> Any:
        threads = [
            threading.Thread(target=f, daemon=True) for f in (self._rss_loop, self._health_loop)
        ]
        for th in threads:
            th.start()
        await asyncio.sleep(0.3)  # a baseline before the request
        try:
            return await work
        finally:
            await asyncio.sleep(0.3)
            self._stop.set()
            for th in threads:
                th.join()


async def _embed_one(c: httpx.AsyncClient, texts: list[str]) -> dict[str, Any]:
    """One client's request, resent after each 429 once its Retry-After has passed (what a
    well-behaved client does when the gateway's in-flight bytes budget is full)."""
    refused = without_retry_after = 0
    while True:
        r = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": texts})
        if r.status_code != 429:
            break
        refused += 1
        if "retry-after" not in r.headers:
            without_retry_after += 1
        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
    out = {"status": r.status_code, "refused_429": refused,
           "refused_without_retry_after": without_retry_after, "bytes": len(r.content)}  # fmt: skip
    if r.status_code == 200:
        data = r.json()["data"]  # every vector there, in input order
        out["complete_in_order"] = [d["index"] for d in data] == list(range(len(texts)))
    else:
        out["error"] = r.json().get("error", {}).get("message")
    return out


async def _embed(url: str, n: int, copies: int = 1) -> dict[str, Any]:
    texts = [f"input number {i} with a few words of text" for i in range(n)]
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        t = time.monotonic()
        rs = await asyncio.gather(*(_embed_one(c, texts) for _ in range(copies)))
        elapsed = time.monotonic() - t
    return {"status": sorted({r["status"] for r in rs}), "seconds": elapsed,
            "request_bytes": len(json.dumps({"input": texts})),
            "response_bytes": rs[0]["bytes"],
            "refused_429": sum(r["refused_429"] for r in rs),
            "refused_without_retry_after": sum(r["refused_without_retry_after"] for r in rs),
            "complete_in_order": sum(1 for r in rs if r.get("complete_in_order")),
            "error": next((r["error"] for r in rs if "error" in r), None)}  # fmt: skip


async def _embed_in_worker(url: str, n: int, copies: int) -> dict[str, Any]:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--embed-worker", url, str(n), str(copies),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await worker.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


def embeddings(pid: int, url: str) -> dict[str, Any]:
    idle = rss_mib(pid)
    out: dict[str, Any] = {"idle_rss_mib": idle, "runs": {}}
    for name, n, copies in (("100k inputs", 100_000, 1), ("2048 inputs", 2048, 1),
                            ("8 x 2048 inputs", 2048, 8)):  # fmt: skip
        s = Sampler(pid, url)
        before = rss_mib(pid)
        res = asyncio.run(s.during(_embed_in_worker(url, n, copies)))
        lat = np.array([h[1] for h in s.health])
        res.update(
            rss_before_mib=before,
            peak_rss_mib=max(r[1] for r in s.rss),
            peak_over_idle_mib=max(r[1] for r in s.rss) - idle,
            health_polls=len(lat),
            health_p50_ms=float(np.percentile(lat, 50)),
            health_p99_ms=float(np.percentile(lat, 99)),
            health_max_ms=float(lat.max()),
            health_non_200=sum(1 for h in s.health if h[2] != 200),
            series={"rss": s.rss, "health": s.health},
        )
        out["runs"][name] = res
    return out


# -- 3. slow and idle connections: benchmarks/hostile_slow.py -------------------------------


# -- 4. batch with the fleet down for 30 s -----------------------------------------------------
def batch_outage(down_s: float = 30.0) -> dict[str, Any]:
    from sage_cp_plugin.sim import SimFleetThread, SimInstanceConfig

    fleet = SimFleetThread([SimInstanceConfig(time_scale=0.05, seed=1)])
    (sim_url,) = fleet.start()
    tmp = Path(tempfile.mkdtemp(prefix="sage-cp-outage-"))
    try:
        cfg = tmp / "fleet.yaml"
        port = int(sim_url.rsplit(":", 1)[1])
        cfg.write_text(
            "scheduling_policy: fifo\nhealth: {interval_s: 0.5, timeout_s: 0.5}\n"
            f"instances:\n  - {{instance_id: g0, host: 127.0.0.1, port: {port}, "
            "model_name: sim-model}\n"
        )
        src = tmp / "in.jsonl"
        src.write_text("".join(json.dumps({
            "custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {**CHAT, "max_tokens": 16}}) + "\n" for i in range(400)))  # fmt: skip
        out = tmp / "out.jsonl"
        t0 = time.monotonic()
        job = subprocess.Popen(
            [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "batch", str(src), "-o",
             str(out), "--config", str(cfg), "--concurrency", "8", "--no-progress", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while not out.exists() or len(out.read_text().splitlines()) < 100:
            time.sleep(0.05)
        down = {"error_rate": 1.0, "health_status": 503}
        httpx.post(f"{sim_url}/sim/faults", json=down)
        went_down = time.monotonic() - t0
        lines_at_down = len(out.read_text().splitlines())
        time.sleep(down_s)
        httpx.post(f"{sim_url}/sim/faults", json={})
        came_back = time.monotonic() - t0
        stdout, stderr = job.communicate(timeout=600)
        elapsed = time.monotonic() - t0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        ids = [r["custom_id"] for r in rows]
        summary = json.loads(stdout)["summary"]
        return {
            "lines": 400, "down_s": down_s, "went_down_at_s": went_down,
            "came_back_at_s": came_back, "lines_done_when_down": lines_at_down,
            "elapsed_s": elapsed, "exit_code": job.returncode,
            "result_lines": len(rows), "distinct_ids": len(set(ids)),
            "errors": sum(1 for r in rows if r["error"] is not None),
            "outage_retries": summary.get("outage_retries"),
            "longest_outage_s": summary.get("longest_outage_s"),
            "stderr_tail": stderr[-500:],
        }  # fmt: skip
    finally:
        fleet.stop()


# -- 5. sustained 2x overload (re-check of what held before) -----------------------------------
async def _overload(url: str, pid: int, seconds: float) -> dict[str, Any]:
    body = {**CHAT, "max_tokens": 32}
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        # Service rate: closed loop with every instance slot busy and half the
        # pending bound queued behind them, so the gateway's queue is never empty (the rate
        # is the fleet's, not the client's) and never full (no 429 during the measurement);
        # over a window many request latencies long.
        done = 0
        end = time.monotonic() + 20.0

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                r = await c.post("/v1/chat/completions", json=body)
                done += r.status_code == 200

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(SLOTS + MAX_PENDING // 2)))
        rate = done / (time.monotonic() - t0)
        interval = 1.0 / (2 * rate)
        rss: list[float] = []
        outcomes: list[tuple[int, bool]] = []
        lost = 0
        why: dict[str, int] = {}  # distinct error messages / exception types, counted

        async def one() -> None:
            nonlocal lost
            try:
                r = await c.post("/v1/chat/completions", json=body)
                outcomes.append((r.status_code, "retry-after" in r.headers))
                if r.status_code != 200:
                    msg = f"{r.status_code}: {r.json()['error']['message'][:120]}"
                    why[msg] = why.get(msg, 0) + 1
            except httpx.HTTPError as exc:
                lost += 1
                msg = f"client error: {type(exc).__name__}: {str(exc)[:80]}"
                why[msg] = why.get(msg, 0) + 1

        tasks = []
        start = time.monotonic()
        next_rss = start
        i = 0
        while time.monotonic() - start < seconds:
            tasks.append(asyncio.create_task(one()))
            i += 1
            if time.monotonic() >= next_rss:
                rss.append(rss_mib(pid))
                next_rss += 1.0
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        sent_rate = i / (time.monotonic() - start)
        await asyncio.gather(*tasks)
        rss.append(rss_mib(pid))
        # The shedding path for certain, whatever the rates above did: more requests at once
        # than slots plus the pending bound.
        burst = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=body) for _ in range(4 * (SLOTS + MAX_PENDING))),
            return_exceptions=True,
        )
        burst_codes: dict[str, int] = {}
        for r in burst:
            key = str(r.status_code) if isinstance(r, httpx.Response) else "lost"
            burst_codes[key] = burst_codes.get(key, 0) + 1
        burst_ra = sum(1 for r in burst if isinstance(r, httpx.Response)
                       and r.status_code == 429 and "retry-after" in r.headers)  # fmt: skip
    codes: dict[str, int] = {}
    for code, _ in outcomes:
        codes[str(code)] = codes.get(str(code), 0) + 1
    shed = [ra for code, ra in outcomes if code == 429]
    return {"seconds": seconds, "service_rate_per_s": rate, "offered_rate_per_s": sent_rate,
            "requests": i, "status_counts": codes, "server_errors": sum(
                1 for code, _ in outcomes if code >= 500), "lost": lost,
            "shed_with_retry_after": sum(shed), "shed": len(shed), "why": why,
            "rss_first_mib": rss[0], "rss_max_mib": max(rss), "rss_last_mib": rss[-1],
            "burst_requests": len(burst), "burst_status_counts": burst_codes,
            "burst_429_with_retry_after": burst_ra}  # fmt: skip


def overload(seconds: float) -> dict[str, Any]:
    # The instance, not the gateway's or the client's CPU, must be the bottleneck, or the
    # overload shows as latency and never reaches the pending bound: one simulator in a
    # process of its own with SLOTS slots and a real-time engine (time scale 1), whose
    # capacity is far below what this client can send. Default connection timeouts
    # (keep-alive 30 s), as a deployment would run: a 5 s keep-alive races a client pool
    # that reuses a connection just as it is closed.
    sims, cfg = external_fleet(gen_slots=SLOTS, gen_time_scale=1.0)
    try:
        proc, url = start_gateway("--config", str(cfg), "--max-pending", str(MAX_PENDING),
                                  short_timeouts=False)  # fmt: skip
        try:
            time.sleep(1.0)
            return asyncio.run(_overload(url, proc.pid, seconds))
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        for sp in sims:
            sp.terminate()
            sp.wait(30)


# -- report ----------------------------------------------------------------------------------
def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    counts = data["hostile"]["status_counts"]
    ax[0].bar(list(counts), list(counts.values()), color="tab:blue")
    ax[0].set_title(
        f"75 hostile requests: status codes ({len(data['hostile']['server_errors'])} >= 500)"
    )
    ax[0].set_xlabel("HTTP status")
    run = data["embeddings"]["runs"]["100k inputs"]
    big = data["embeddings"]["runs"]["8 x 2048 inputs"]
    for name, r, color in (("100k (refused)", run, "tab:red"), ("8 x 2048", big, "tab:green")):
        h = np.array([[t, ms] for t, ms, _ in r["series"]["health"]])
        ax[1].plot(h[:, 0], h[:, 1], color=color, label=f"/health latency, {name}")
    ax[1].set_xlabel("s")
    ax[1].set_ylabel("/health latency (ms)")
    ax2 = ax[1].twinx()
    for name, r, color in (("100k", run, "tab:red"), ("8 x 2048", big, "tab:green")):
        rs = np.array(r["series"]["rss"])
        ax2.plot(rs[:, 0], rs[:, 1], color=color, linestyle=":", label=f"RSS {name}")
    ax2.set_ylabel("gateway RSS (MiB)")
    ax[1].legend(loc="upper left", fontsize=7)
    ax[1].set_title("large embedding requests")
    slow = data["slow_connections"]
    for kind, color in (("idle", "tab:gray"), ("header", "tab:orange"), ("body", "tab:purple")):
        ts = [t for k, t in slow["close_times"] if k == kind]
        ax[2].hist(ts, bins=30, alpha=0.6, color=color, label=f"{kind} ({len(ts)})")
    ax[2].set_xlabel("seconds until the gateway closed the connection")
    ax[2].set_title(f"{len(slow['close_times']):,} slow/idle connections (timeouts 5 s)")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def slim(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON without the raw time series (they are in the PNG; 1 MB otherwise)."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    for section in ("embeddings", "embeddings_external_fleet"):
        for run in out.get(section, {}).get("runs", {}).values():
            run.pop("series", None)
    out.get("slow_connections", {}).pop("close_times", None)
    return out


def _embedding_table(section: dict[str, Any]) -> list[str]:
    rows = ["| request | status | seconds | 429s (all with Retry-After?) | complete | peak RSS over idle (MiB) | /health p50 / p99 / max (ms) | /health non-200 |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in section["runs"].items():
        rows.append(
            f"| {name} | {r['status']} | {r['seconds']:.2f} | {r['refused_429']} "
            f"({'yes' if r['refused_without_retry_after'] == 0 else 'NO'}) | "
            f"{r['complete_in_order']} | {r['peak_over_idle_mib']:.0f} | "
            f"{r['health_p50_ms']:.1f} / {r['health_p99_ms']:.1f} / {r['health_max_ms']:.1f} | "
            f"{r['health_non_200']} |"
        )
    return rows


def markdown(d: dict[str, Any]) -> str:
    lines = [
        "# Hostile clients against `sage-cp serve` (issue 11)", "",
        f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores, load "
        f"{d['machine']['loadavg_1m']:.1f} at start; commit {d['machine']['commit']}. "
        "Target: `sage-cp serve`, embedded simulated fleet, timeouts header/body/idle "
        f"{TIMEOUTS['header']:g}/{TIMEOUTS['body']:g}/{TIMEOUTS['idle']:g} s.", "",
    ]  # fmt: skip
    if "hostile" in d:
        h = d["hostile"]
        lines += [
            "## 75 hostile requests", "",
            f"Status counts: {h['status_counts']}; responses >= 500: {len(h['server_errors'])}; "
            f"plain-text errors: {len(h['plain_text_errors'])}; circuits open afterwards: "
            f"{sum(h['circuit_open_after'].values())} of {len(h['circuit_open_after'])}; "
            f"a normal chat request afterwards: {h['normal_chat_after']}.", "",
        ]  # fmt: skip
    if "embeddings" in d:
        e = d["embeddings"]
        lines += [
            "## Large embedding requests", "",
            "Each client resends its request after a 429 once the Retry-After has passed. "
            "'complete' counts answers holding every vector in input order.", "",
            f"Embedded fleet (the simulators share the gateway's event loop); idle gateway RSS "
            f"{e['idle_rss_mib']:.0f} MiB:", "",
            *_embedding_table(e),
        ]  # fmt: skip
    if "embeddings_external_fleet" in d:
        x = d["embeddings_external_fleet"]
        lines += ["", "Same requests, simulators in processes of their own (the gateway's own "
                  f"cost); idle RSS {x['idle_rss_mib']:.0f} MiB:", "", *_embedding_table(x)]  # fmt: skip
    if "slow_connections" in d:
        lines += ["", *slow_markdown(d["slow_connections"])]
    if "batch_outage" in d:
        bo = d["batch_outage"]
        lines += ["## Batch job, fleet down 30 s in the middle", "",
                  f"{bo['lines']} lines; the instance went down (health 503, every request 500) "
                  f"at {bo['went_down_at_s']:.1f} s with {bo['lines_done_when_down']} lines done "
                  f"and came back at {bo['came_back_at_s']:.1f} s. Job ended at "
                  f"{bo['elapsed_s']:.1f} s, exit code {bo['exit_code']}; result lines "
                  f"{bo['result_lines']}, distinct custom_ids {bo['distinct_ids']}, errors "
                  f"{bo['errors']}; outage retries {bo['outage_retries']}, longest outage seen "
                  f"{bo['longest_outage_s']:.1f} s.", ""]  # fmt: skip
    if "overload" in d:
        o = d["overload"]
        lines += ["## Sustained 2x overload (re-check)", "",
                  f"Service rate {o['service_rate_per_s']:.0f}/s (closed loop, {SLOTS + MAX_PENDING // 2} in flight); "
                  f"offered {o['offered_rate_per_s']:.0f}/s open loop for {o['seconds']:g} s "
                  f"(`--max-pending {MAX_PENDING}`): {o['requests']} requests, status counts "
                  f"{o['status_counts']}, >= 500: {o['server_errors']}, lost (no answer): "
                  f"{o['lost']}, 429 with Retry-After: {o['shed_with_retry_after']} of "
                  f"{o['shed']}; gateway RSS first/max/last {o['rss_first_mib']:.0f}/"
                  f"{o['rss_max_mib']:.0f}/{o['rss_last_mib']:.0f} MiB. Then a burst of "
                  f"{o['burst_requests']} at once (4 x slots + pending bound): status counts "
                  f"{o['burst_status_counts']}, 429 with Retry-After: "
                  f"{o['burst_429_with_retry_after']}.", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def _embeddings_section(label: str, pid: int, url: str) -> dict[str, Any]:
    out = embeddings(pid, url)
    print(f"{label}:", {k: {"status": v["status"], "429s": v["refused_429"],
                            "rss+": round(v["peak_over_idle_mib"]),
                            "health_p99_ms": round(v["health_p99_ms"], 1)}
                        for k, v in out["runs"].items()}, flush=True)  # fmt: skip
    return out


def _slow_section(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    n = 100 if args.small else 1000
    out = asyncio.run(slow_run(url, pid, CHAT, TIMEOUTS, n, args.rounds, args.slow_nice))
    print("slow:", {k: (v["closed_by_server"], round(v["close_after_s_max"], 2))
                    for k, v in out["by_kind"].items()},
          f"chat p99 ratio {out['ratio_p99']:.2f}", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument(
        "--small",
        action="store_true",
        help="a quick proof that the benchmark runs: 100 slow connections instead of 1,000, "
        "no batch run, 10 s of overload (figures not comparable with a full run)",
    )
    ap.add_argument(
        "--only-slow",
        action="store_true",
        help="only the slow-connection section (writes hostile-slow[-small].{json,md})",
    )
    ap.add_argument("--out", help="--only-slow: the results' name instead of hostile-slow")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="slow-connection section: rounds of without/with, latencies pooled (default 1)",
    )
    ap.add_argument(
        "--slow-nice",
        type=int,
        default=19,
        help="CPU priority of the slow clients' process (19: below the gateway's; 0: equal)",
    )
    ap.add_argument(
        "--slow-worker", nargs=4, metavar=("URL", "N", "LIMIT_S", "NICE"), help=argparse.SUPPRESS
    )
    ap.add_argument(
        "--embed-worker", nargs=3, metavar=("URL", "N", "COPIES"), help=argparse.SUPPRESS
    )
    ap.add_argument("--overload-s", type=float, default=60.0, help="0 skips the overload run")
    ap.add_argument("--only-overload", action="store_true", help="(diagnosis) print and exit")
    args = ap.parse_args()
    if args.embed_worker:
        url, n, copies = args.embed_worker
        print(json.dumps(asyncio.run(_embed(url, int(n), int(copies)))))
        return
    if args.slow_worker:
        url, n, limit, nice = args.slow_worker
        worker_main(url, int(n), float(limit), int(nice))
        return
    if args.small:
        args.skip_batch = True
        args.overload_s = min(args.overload_s, 10.0)
    data: dict[str, Any] = {"machine": machine(), "timeouts_s": TIMEOUTS}
    if args.only_overload:
        print(json.dumps(overload(args.overload_s), indent=1))
        return
    if args.only_slow:
        name = args.out or ("hostile-slow-small" if args.small else "hostile-slow")
        proc, url = start_gateway()
        try:
            time.sleep(1.0)
            data["slow_connections"] = _slow_section(url, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(30)
        write_results(name, slim(data), markdown(data))
        print((RESULTS / f"{name}.md").read_text())
        return
    proc, url = start_gateway()
    try:
        time.sleep(1.0)  # let the embedded fleet's first probes settle
        data["hostile"] = hostile(url)
        print("75 cases:", data["hostile"]["status_counts"], flush=True)
        data["embeddings"] = _embeddings_section("embeddings", proc.pid, url)
        data["slow_connections"] = _slow_section(url, proc.pid, args)
    finally:
        proc.terminate()
        proc.wait(30)
    # The same embedding requests with the simulators in processes of their own: what the
    # gateway itself costs (the embedded fleet shares the gateway's event loop).
    sims, cfg = external_fleet()
    try:
        proc, url = start_gateway("--config", str(cfg))
        try:
            time.sleep(1.0)
            data["embeddings_external_fleet"] = _embeddings_section(
                "embeddings, external fleet", proc.pid, url
            )
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        for sp in sims:
            sp.terminate()
            sp.wait(30)
    if not args.skip_batch:
        data["batch_outage"] = batch_outage()
        print("batch:", {k: v for k, v in data["batch_outage"].items() if k != "stderr_tail"})
    if args.overload_s > 0:
        data["overload"] = overload(args.overload_s)
        print("overload:", data["overload"], flush=True)
    name = "hostile-small" if args.small else "hostile"  # never overwrite a full run
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(data, RESULTS / f"{name}.png")
    write_results(name, slim(data), markdown(data))
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
