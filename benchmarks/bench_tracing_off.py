"""What the tracing hooks cost per request: off (issue 13: "the tracing-off path adds no
measurable cost"), and on for an unsampled and a sampled request.

With tracing off the gateway mounts no middleware and the request path meets only the
tracing hooks' first lines (`state.TRACER is None` / `item.trace is None`). So the off path
costs (hook calls per request) x (cost of one call when off). Both are measured here:

1. Calls per request: real requests (plain, streamed, embeddings) through a real control
   plane in front of its embedded simulated fleet, every hook wrapped by a counter.
2. Cost per call: each hook called with tracing off, `timeit`, best of 5 (process CPU
   time; the machine's load inflates it, never deflates it).

The product is compared with the gateway's CPU per request measured by
`bench_gateway_cpu.py --tracing` (the newest benchmarks/results/gateway_cpu_tracing.json,
"sage-cp" point), when that file exists.

    python benchmarks/bench_tracing_off.py [--requests 300]

3. The whole path of one request, hooks only, off / unsampled / sampled: the middleware
   around an app making the hook calls in order, timed in process CPU (best of 5).

Writes benchmarks/results/tracing_off.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sage_cp_plugin import tracing
from sage_cp_plugin.config import open_control_plane
from sage_cp_plugin.tracing import spans
from sage_cp_plugin.types import RequestMetadata
from sage_cp_plugin.virtual.provenance import write_stamped

RESULTS = Path(__file__).resolve().parent / "results"
HOOKS = ("on_admit", "on_dispatch", "task_context", "start_attempt", "end_attempt", "on_result")


async def count_calls(n: int) -> dict[str, Any]:
    """Hook calls per request over `n` requests of each kind, tracing off."""
    assert not tracing.enabled()
    counts = dict.fromkeys(HOOKS, 0)
    originals = {h: getattr(spans, h) for h in HOOKS}

    def counting(name: str) -> Any:
        inner = originals[name]

        def hook(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return inner(*args, **kwargs)

        return hook

    for h in HOOKS:
        setattr(spans, h, counting(h))
    cfg = {"scheduling_policy": "fifo", "embedded_fleet": {"time_scale": 0.0}}
    try:
        async with open_control_plane(cfg) as m:
            # The manager registered the observer itself: count it there.
            obs = m.results.observers
            obs[obs.index(originals["on_result"])] = spans.on_result
            for i in range(n):
                res = await m.generate(f"hello {i}", max_tokens=4)
                if res.state.value != "completed":
                    raise SystemExit(f"request {i} ended {res.state.value}: {res.error}")
                chunks = [c async for c in m.stream(f"stream {i}", max_tokens=4)]
                if not chunks:
                    raise SystemExit(f"streamed request {i} gave no chunk")
                await m.embed(f"embed {i}")
    finally:
        for h, f in originals.items():
            setattr(spans, h, f)
    total = 3 * n
    return {
        "requests": total,
        "calls": counts,
        "per_request": {h: c / total for h, c in counts.items()},
    }


def cost_per_call_ns() -> dict[str, float]:
    """Each hook with tracing off, as the request path calls it (best of 5, process CPU)."""

    class Item:
        trace = None

    item, req = Item(), RequestMetadata(request_id="x", prompt="p", max_tokens=1)
    calls = {
        "on_admit": lambda: spans.on_admit(item),
        "on_dispatch": lambda: None,  # dispatch.py tests `item.trace` inline: no call
        "task_context": lambda: spans.task_context(item),
        "start_attempt": lambda: spans.start_attempt(req, None, None),  # type: ignore[arg-type]
        "end_attempt": lambda: spans.end_attempt(None, None, None),
        "on_result": lambda: spans.on_result(item, None),
    }
    base = min(timeit.repeat(lambda: None, number=200_000, repeat=5, timer=time.process_time))
    out = {}
    for name, fn in calls.items():
        t = min(timeit.repeat(fn, number=200_000, repeat=5, timer=time.process_time))
        # The empty lambda's own call is the benchmark's, not the hook's.
        out[name] = max(0.0, (t - base) / 200_000 * 1e9) if name != "on_dispatch" else 0.0
    return out


async def hook_path_us(mode: str, n: int) -> float:
    """CPU microseconds per request of the whole tracing path of one request, hooks only
    (the gateway's middleware around an app that makes the control plane's hook calls in
    their order; spans go to the SDK's in-memory exporter, so OTLP encoding is not in it):
    `off`, `unsampled` (ratio 0) or `sampled` (ratio 1)."""
    from types import SimpleNamespace

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sage_cp_plugin.attempt_outcome import Outcome
    from sage_cp_plugin.openai_body import JSON_HEADERS
    from sage_cp_plugin.tracing.asgi import TracingMiddleware
    from sage_cp_plugin.types import ExecutionInstance, RequestResult, RequestStatus

    exporter = InMemorySpanExporter()
    if mode != "off":
        ratio = 0.0 if mode == "unsampled" else 1.0
        tracing.configure(tracing.TracingConfig(sampling_ratio=ratio), exporter=exporter)
    req = RequestMetadata(request_id="r", prompt="hello", max_tokens=4, model_name="m")
    inst = ExecutionInstance(instance_id="i0", host="127.0.0.1", port=8001, model_name="m")
    action = SimpleNamespace(state=SimpleNamespace(instance_id="i0"))
    out = Outcome(started_at=0.0, prompt_tokens=2, completion_tokens=4,
                  response={"model": "m", "choices": [{"finish_reason": "length"}]})  # fmt: skip
    result = RequestResult(request_id="r", state=RequestStatus.COMPLETED, instance_id="i0",
                           prompt_tokens=2, completion_tokens=4, attempts=1)  # fmt: skip

    def attempt() -> None:
        span = spans.start_attempt(req, inst, None)
        if span is not None:
            spans.attempt_headers(span, JSON_HEADERS)
        spans.end_attempt(span, out, None)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        item = SimpleNamespace(request=req, trace=None, attempts=0, excluded=set())
        spans.on_admit(item)
        if item.trace is not None and item.trace.recording:
            spans.on_dispatch(item, action, policy="fifo", router="round_robin",
                              candidates=[("i0", 0.0), ("i1", 0.01)])  # fmt: skip
        ctx = spans.task_context(item)
        if ctx is None:
            attempt()
        else:
            ctx.run(attempt)
        spans.on_result(item, result)
        await send({"type": "http.response.start", "status": 200})

    async def send(message: Any) -> None:
        return None

    asgi = TracingMiddleware(app) if tracing.enabled() else app
    scope = {"type": "http", "path": "/v1/completions", "method": "POST",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json")]}  # fmt: skip
    try:
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                await asgi(scope, None, send)
            best = min(best, time.process_time() - t0)
            exporter.clear()
    finally:
        tracing.shutdown()
    return best / n * 1e6


def gateway_cpu_ms() -> float | None:
    path = RESULTS / "gateway_cpu_tracing.json"
    if not path.exists():
        return None
    points = json.loads(path.read_text())["points"]
    off = [p["cpu_ms_per_request"] for p in points if p["target"] == "sage-cp"]
    return min(off) if off else None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=300, help="requests of each kind counted")
    args = ap.parse_args()
    if args.requests < 1:
        ap.error("--requests must be positive")
    counted = asyncio.run(count_calls(args.requests))
    cost = cost_per_call_ns()
    per_req = {h: counted["per_request"][h] * cost[h] for h in HOOKS}
    total_ns = sum(per_req.values())
    path_us = {m: asyncio.run(hook_path_us(m, 2000)) for m in ("off", "unsampled", "sampled")}
    gw = gateway_cpu_ms()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    data = {
        "loadavg": " ".join(loadavg),
        "counted": counted,
        "ns_per_call": cost,
        "ns_per_request": per_req,
        "total_ns_per_request": total_ns,
        "hook_path_us_per_request": path_us,
        "gateway_off_cpu_ms_per_request": gw,
        "fraction_of_gateway_cpu": (total_ns / 1e6 / gw) if gw else None,
        "command": "python benchmarks/bench_tracing_off.py " + " ".join(sys.argv[1:]),
    }
    lines = [
        "# Tracing hooks: cost per request (off, unsampled, sampled)",
        "",
        f"Load average at the start {data['loadavg']} (a loaded machine inflates the per-call "
        "cost, never deflates it). With tracing off no middleware is mounted; the request "
        "path calls the hooks below, each returning at its first test.",
        "",
        f"Calls counted over {counted['requests']} requests (completions, streamed completions, "
        "embeddings) through a real control plane and its embedded simulated fleet.",
        "",
        "| hook | calls per request | ns per call (off) | ns per request |",
        "|---|---:|---:|---:|",
    ]
    for h in HOOKS:
        note = " (inline test, no call)" if h == "on_dispatch" else ""
        lines.append(
            f"| {h}{note} | {counted['per_request'][h]:.2f} | {cost[h]:.0f} | {per_req[h]:.0f} |"
        )
    lines += ["", f"**Total: {total_ns:.0f} ns per request.**"]
    if gw:
        lines.append(
            f"The gateway's CPU per request with tracing off was {gw:.3f} ms "
            f"(gateway_cpu_tracing.json): the off path is {total_ns / 1e6 / gw * 100:.3f} % of it."
        )
    lines += [
        "",
        "## The whole tracing path of one request, hooks only",
        "",
        "The gateway's middleware around an app making the control plane's hook calls in "
        "their order (admit, decision, attempt span and headers, result), 2,000 requests, best "
        "of 5; spans go to the SDK's in-memory exporter, so OTLP encoding and the exporter "
        "thread are not in these numbers (they are in bench_gateway_cpu's).",
        "",
        "| tracing | CPU us per request |",
        "|---|---:|",
        f"| off (no middleware) | {path_us['off']:.1f} |",
        f"| on, request not sampled (ratio 0) | {path_us['unsampled']:.1f} |",
        f"| on, request sampled (ratio 1) | {path_us['sampled']:.1f} |",
    ]
    if gw:
        lines.append(
            f"\nAgainst the gateway's {gw:.3f} ms per request: an unsampled request's path is "
            f"{path_us['unsampled'] / 1e3 / gw * 100:.1f} %, a sampled one's "
            f"{path_us['sampled'] / 1e3 / gw * 100:.1f} % (before export)."
        )
    lines += ["", f"Re-run: `{data['command']}`", ""]
    write_stamped(RESULTS, "tracing_off", data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
