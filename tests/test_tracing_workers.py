"""Tracing with `sage-cp serve --workers N` (docs/tracing.md, "--workers"): a real supervisor,
scheduling process and forwarding workers exporting over OTLP/gRPC to a real receiver in
this process (tests/otlp_receiver.py), in front of real simulator servers whose engine
spans go to the SDK's in-memory exporter here. One trace crosses four processes: the
worker's SERVER span, the scheduler's request/queue/decision spans, the worker's CLIENT
span per attempt, the engine's `llm_request`."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

import httpx

from benchmarks.procfs import children_of
from sage_cp_plugin import tracing
from sage_cp_plugin.sim import SimFleet
from sage_cp_plugin.sim.config import FaultConfig
from sage_cp_plugin.tracing import TracingConfig
from tests.helpers import wait_until
from tests.otlp_receiver import Receiver, render, skeleton
from tests.simfleet import gen
from tests.test_gateway_support import start_gateway_process
from tests.test_gateway_workers import bad_and_good_fleet, role_of, stop

BODY = {"model": "sim-model", "prompt": "hello", "max_tokens": 3}
SERVER_KIND, CLIENT_KIND = 2, 3  # OTLP's Span.SpanKind values
ERROR = 2  # OTLP's Status.StatusCode


DOC = Path(__file__).resolve().parent.parent / "docs" / "tracing.md"
MARK = "<!-- rendered trace: tests/test_tracing_workers.py -->"


def documented_tree() -> list[str]:
    """The example trace in docs/tracing.md (the code block after MARK)."""
    text = DOC.read_text()
    block = text[text.index(MARK) :].split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip()]


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-{'01' if sampled else '00'}"


def one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


def engine_span_under(rx: Receiver, client_span_id: str) -> bool:
    return any(s["parent_id"] == client_span_id for s in rx.named("llm_request"))


async def test_one_trace_crosses_worker_scheduler_worker_and_engine(tmp_path: Path) -> None:
    async with SimFleet(
        [*gen(1, time_scale=0.02, faults=FaultConfig(error_rate=1.0)), *gen(1, time_scale=0.02)]
    ) as sims:
        cfg = bad_and_good_fleet(tmp_path, sims)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        with Receiver() as rx:
            # The simulators run in this process: their engine spans go to the receiver too.
            tracing.configure_engine(TracingConfig(otlp_traces_endpoint=rx.endpoint))
            # In a thread: the simulators on this event loop must answer the scheduler's
            # health probes while it starts.
            gp = await asyncio.to_thread(
                start_gateway_process,
                "--config", str(cfg), "--workers", "2", "--otlp-traces-endpoint", rx.endpoint,
                timeout=120, env=env,
            )  # fmt: skip
            children = children_of(gp.proc.pid)
            roles = {pid: role_of(pid) for pid in children}
            traces: dict[str, tuple[str, httpx.Response]] = {}
            try:
                async with httpx.AsyncClient(base_url=gp.url, timeout=60) as c:
                    # Plain requests until one failed over (round robin starts on either).
                    for _ in range(6):
                        tid, parent, tp = traceparent()
                        r = await c.post("/v1/completions", json=BODY, headers={"traceparent": tp})
                        assert r.status_code == 200, r.text
                        traces[tid] = (parent, r)
                        if r.headers["x-sage-attempts"] == "2":
                            break
                    retried = [t for t, (_, r) in traces.items()
                               if r.headers["x-sage-attempts"] == "2"]  # fmt: skip
                    assert retried, "no request failed over from the failing instance"
                    failed_over = retried[0]
                    stream_tid, stream_parent, tp = traceparent()
                    async with c.stream("POST", "/v1/completions", json={**BODY, "stream": True},
                                        headers={"traceparent": tp}) as r:  # fmt: skip
                        assert r.status_code == 200
                        lines = [line async for line in r.aiter_lines()]
                        assert any(line.startswith("data:") for line in lines)
                    proxied_tid, proxied_parent, tp = traceparent()
                    assert (
                        await c.get("/v1/models", headers={"traceparent": tp})
                    ).status_code == 200
                    unsampled_tid, _, tp = traceparent(sampled=False)
                    r = await c.post("/v1/completions", json=BODY, headers={"traceparent": tp})
                    assert r.status_code == 200
            finally:
                stop(gp, children)  # SIGTERM: every process flushes its batched spans
                tracing.shutdown()  # and so does this one (the engine spans)
            roles[os.getpid()] = "engine"
            await wait_until(
                lambda: len(rx.in_trace(stream_tid)) >= 5, "the streamed request's spans"
            )

            # A failed-over request: worker SERVER -> scheduler request -> two worker CLIENT
            # attempts (the first marked error, on `bad`), the engine's span under the second.
            parent, _ = traces[failed_over]
            spans = rx.in_trace(failed_over)
            server = one(spans, "POST /v1/completions")
            request = one(spans, "sage_cp.request")
            assert server["kind"] == SERVER_KIND and server["parent_id"] == parent
            assert roles[server["pid"]] == "worker"
            assert request["parent_id"] == server["span_id"]
            assert roles[request["pid"]] == "scheduler"
            assert one(spans, "sage_cp.queue")["parent_id"] == request["span_id"]
            decisions = [s for s in spans if s["name"] == "sage_cp.decision"]  # one per attempt
            assert len(decisions) == 2
            assert {s["parent_id"] for s in decisions} == {request["span_id"]}
            attempts = [s for s in spans if s["kind"] == CLIENT_KIND]
            assert len(attempts) == 2
            assert {s["parent_id"] for s in attempts} == {request["span_id"]}
            assert {s["pid"] for s in attempts} == {server["pid"]}  # the owning worker
            bad = [
                s for s in attempts if s["attributes"]["sage_cp.instance_id"].string_value == "bad"
            ]
            good = [s for s in attempts if s is not bad[0]]
            assert len(bad) == 1 and bad[0]["status"] == ERROR and good[0]["status"] != ERROR
            await wait_until(lambda: engine_span_under(rx, good[0]["span_id"]),
                            "the engine span under the successful attempt")  # fmt: skip

            # Streamed: the same tree (it may have failed over too).
            spans = rx.in_trace(stream_tid)
            server = one(spans, "POST /v1/completions")
            request = one(spans, "sage_cp.request")
            attempts = [s for s in spans if s["kind"] == CLIENT_KIND]
            assert server["parent_id"] == stream_parent
            assert request["parent_id"] == server["span_id"]
            assert attempts and {s["parent_id"] for s in attempts} == {request["span_id"]}
            (ok,) = [s for s in attempts if s["status"] != ERROR]
            await wait_until(lambda: engine_span_under(rx, ok["span_id"]),
                            "the streamed request's engine span")  # fmt: skip

            # A proxied route: one SERVER span, the scheduling process's.
            await wait_until(lambda: bool(rx.in_trace(proxied_tid)), "the proxied span")
            (models,) = rx.in_trace(proxied_tid)
            assert models["name"] == "GET /v1/models" and models["parent_id"] == proxied_parent
            assert roles[models["pid"]] == "scheduler"

            # The caller said "not sampled": no process recorded anything, nor the engine.
            assert rx.in_trace(unsampled_tid) == []

            # docs/tracing.md shows this failed-over trace: its shape must be the code's.
            tree = render(rx.in_trace(failed_over), roles)
            print("\n".join(tree))  # pytest -s: the rendering for the docs
            assert skeleton(tree) == skeleton(documented_tree())
