"""`sage-cp batch` vs a plain asyncio + httpx client, same fleet, same concurrency, one run.

Workload: a chat batch and an embedding batch (OpenAI batch-file lines) of --lines lines
each, plus the same at --small-lines to see whether peak memory grows with the file size.
Fleet: the embedded default fleet (2 x sim-model on Llama-3.1-8B/H100 timings, 1 x
sim-embed) in its own process over loopback, at --time-scale. Both clients run as separate
processes against it with the same number of requests in flight; throughput is requests
per second over each job's own run (process start-up excluded, reported separately), peak
memory is each process's max RSS. Writes benchmarks/results/batch.{json,md,png}.

    python benchmarks/bench_batch.py [--lines 10000] [--concurrency 64]
    python benchmarks/bench_batch.py --baseline-client IN OUT --urls U1,U2 -c 64   (internal)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sage_cp_plugin.virtual.provenance import write_stamped

EXTRA: list[str] = os.environ.get("BENCH_EXTRA", "").split()
RESULTS = Path(__file__).resolve().parent / "results"
FLEET_SCRIPT = """
import sys, time
from sage_cp_plugin.sim import SimFleetThread, embedded_default_fleet
fleet = SimFleetThread(embedded_default_fleet(time_scale=float(sys.argv[1])))
print(",".join(fleet.start()), flush=True)
sys.stdin.read()
fleet.stop()
"""


def write_inputs(folder: Path, n: int) -> dict[str, Path]:
    chat, emb = folder / f"chat_{n}.jsonl", folder / f"emb_{n}.jsonl"
    with chat.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "sim-model", "max_tokens": 16, "messages": [
                                    {"role": "user", "content": f"Question {i}: why is the sky blue?"}]}}) + "\n")  # fmt: skip
    with emb.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                                "body": {"model": "sim-embed", "input": f"passage {i} about rivers and hills"}}) + "\n")  # fmt: skip
    return {"chat": chat, "embedding": emb}


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out


# -- the baseline: a plain asyncio + httpx client --------------------------------------------
async def baseline(inp: Path, out: Path, urls: list[str], concurrency: int) -> dict[str, Any]:
    import httpx

    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=concurrency * 2)
    ok = failed = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        sink = out.open("w")

        async def worker(k: int) -> None:
            nonlocal ok, failed
            i = k
            while (raw := await queue.get()) is not None:
                line = json.loads(raw)
                url = urls[i % len(urls)] + line["url"]
                i += 1
                resp = await client.post(url, json=line["body"])
                good = resp.status_code == 200
                ok, failed = ok + good, failed + (not good)
                sink.write(json.dumps({"custom_id": line["custom_id"], "response": {
                    "status_code": resp.status_code, "body": resp.json()}}) + "\n")  # fmt: skip
                sink.flush()

        started = time.perf_counter()
        workers = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        with inp.open() as f:
            for raw in f:
                await queue.put(raw)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - started
        sink.close()
    return {
        "ok": ok,
        "failed": failed,
        "elapsed_s": elapsed,
        "requests_per_s": (ok + failed) / elapsed,
    }


def run_ours(inp: Path, folder: Path, fleet_yaml: Path, c: int) -> dict[str, Any]:
    out = folder / f"ours_{inp.name}"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "batch", str(inp), "-o", str(out),
           "--config", str(fleet_yaml), "-c", str(c), "--no-progress", "--json", *EXTRA]  # fmt: skip
    wall, rss, text = run_measured(cmd)
    s = json.loads(text)["summary"]
    return {"client": "sage-cp batch", "lines": s["total"], "failed": s["failed"],
            "requests_per_s": s["requests_per_s"], "job_s": s["elapsed_s"], "wall_s": wall,
            "peak_rss_mib": rss}  # fmt: skip


def run_baseline(inp: Path, folder: Path, urls: list[str], c: int) -> dict[str, Any]:
    out = folder / f"base_{inp.name}"
    cmd = [sys.executable, __file__, "--baseline-client", str(inp), str(out), "--urls",
           ",".join(urls), "-c", str(c)]  # fmt: skip
    wall, rss, text = run_measured(cmd)
    s = json.loads(text)
    return {"client": "asyncio+httpx", "lines": s["ok"] + s["failed"], "failed": s["failed"],
            "requests_per_s": s["requests_per_s"], "job_s": s["elapsed_s"], "wall_s": wall,
            "peak_rss_mib": rss}  # fmt: skip


def fleet_config(urls: list[str], folder: Path) -> Path:
    import yaml

    instances = []
    for i, u in enumerate(urls):
        port = int(u.rsplit(":", 1)[1])
        emb = i == len(urls) - 1  # embedded_default_fleet: two general, then the embedder
        instances.append({"instance_id": f"sim-{i}", "host": "127.0.0.1", "port": port,
                          "model_name": "sim-embed" if emb else "sim-model",
                          "instance_type": "embedding" if emb else "general",
                          "max_concurrent_requests": 256})  # fmt: skip
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump({"scheduling_policy": "fifo", "instances": instances}))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lines", type=int, default=10_000)
    p.add_argument("--small-lines", type=int, default=2_000)
    p.add_argument("--concurrency", "-c", type=int, default=64)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/sage-cp-bench-batch"))
    p.add_argument("--baseline-client", nargs=2, type=Path, metavar=("IN", "OUT"))
    p.add_argument("--urls", default="")
    args = p.parse_args()
    if args.baseline_client:
        urls = args.urls.split(",")
        inp = args.baseline_client[0]
        pool = urls[-1:] if inp.name.startswith("emb") else urls[:-1]
        res = asyncio.run(baseline(inp, args.baseline_client[1], pool, args.concurrency))
        print(json.dumps(res))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    fleet = subprocess.Popen([sys.executable, "-c", FLEET_SCRIPT, str(args.time_scale)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert fleet.stdout is not None and fleet.stdin is not None
    urls = fleet.stdout.readline().strip().split(",")
    rows: list[dict[str, Any]] = []
    try:
        cfg = fleet_config(urls, args.work)
        for n in (args.lines, args.small_lines):
            for kind, inp in write_inputs(args.work, n).items():
                for runner in ("ours", "baseline"):
                    row = (run_ours(inp, args.work, cfg, args.concurrency) if runner == "ours"
                           else run_baseline(inp, args.work, urls, args.concurrency))  # fmt: skip
                    row.update(kind=kind, file_lines=n)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        fleet.stdin.close()
        fleet.wait(timeout=60)
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def get(kind: str, n: int, client: str) -> dict[str, Any]:
        return next(
            r for r in rows if r["kind"] == kind and r["file_lines"] == n and r["client"] == client
        )

    summary = {}
    for kind in ("chat", "embedding"):
        ours, base = get(kind, args.lines, "sage-cp batch"), get(kind, args.lines, "asyncio+httpx")
        small = get(kind, args.small_lines, "sage-cp batch")
        summary[kind] = {
            "throughput_ratio": ours["requests_per_s"] / base["requests_per_s"],
            "rss_growth_mib": ours["peak_rss_mib"] - small["peak_rss_mib"],
            "goal_met": ours["requests_per_s"] >= 0.9 * base["requests_per_s"],
        }
    data = {"workload": {"lines": args.lines, "small_lines": args.small_lines,
                         "concurrency": args.concurrency, "time_scale": args.time_scale,
                         "fleet": "2 x sim-model (Llama-3.1-8B/H100 timings) + 1 x sim-embed, own process",
                         "chat": "max_tokens 16, one user message", "embedding": "one input string"},
            "rows": rows, "summary": summary}  # fmt: skip
    md = ["# sage-cp batch vs asyncio + httpx", "",
          f"Same simulated fleet (own process, loopback, time scale {args.time_scale}), "
          f"{args.concurrency} requests in flight for both. Throughput over each job's run; "
          "wall includes process start-up. Peak memory = max RSS of the client process.", "",
          "| batch | lines | client | req/s | job s | wall s | peak RSS MiB | failed |",
          "|---|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        md.append(f"| {r['kind']} | {r['file_lines']} | {r['client']} | {r['requests_per_s']:.0f} | "
                  f"{r['job_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['failed']} |")  # fmt: skip
    md += ["", "| batch | throughput vs baseline | goal >= 90 % | RSS growth "
           f"{args.small_lines} -> {args.lines} lines |", "|---|---:|---|---:|"]  # fmt: skip
    for kind, s in summary.items():
        md.append(f"| {kind} | {100 * s['throughput_ratio']:.0f} % | "
                  f"{'met' if s['goal_met'] else 'NOT met'} | {s['rss_growth_mib']:+.1f} MiB |")  # fmt: skip
    write_stamped(RESULTS, "batch", data, "\n".join(md) + "\n")
    plot(rows, args)


def plot(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    labels, ours, base = [], [], []
    for kind in ("chat", "embedding"):
        labels.append(kind)
        for client, into in (("sage-cp batch", ours), ("asyncio+httpx", base)):
            into.append(next(r["requests_per_s"] for r in rows if r["kind"] == kind
                             and r["client"] == client and r["file_lines"] == args.lines))  # fmt: skip
    x = range(len(labels))
    a.bar([i - 0.2 for i in x], ours, 0.4, label="sage-cp batch")
    a.bar([i + 0.2 for i in x], base, 0.4, label="asyncio+httpx")
    a.set_xticks(list(x), labels)
    a.set_ylabel("requests / s")
    a.set_title(f"{args.lines} lines, {args.concurrency} in flight")
    a.legend()
    for kind in ("chat", "embedding"):
        pts = sorted((r["file_lines"], r["peak_rss_mib"]) for r in rows
                     if r["kind"] == kind and r["client"] == "sage-cp batch")  # fmt: skip
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"sage-cp batch, {kind}")
    b.set_xlabel("lines in the file")
    b.set_ylabel("peak RSS (MiB)")
    b.set_ylim(bottom=0)
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "batch.png", dpi=110)


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    resource.getrlimit(resource.RLIMIT_NOFILE)
    main()
