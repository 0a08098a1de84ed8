"""Request tracing (issue 13, docs/tracing.md) with real components: the gateway and the
manager in front of real simulator servers over loopback, spans collected by the SDK's
in-memory exporter (both the control plane's and the simulator's engine spans)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sage_cp_plugin import RequestMetadata, tracing
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.tracing import TracingConfig
from tests.helpers import wait_until, wait_until_sync
from tests.otlp_receiver import Receiver
from tests.simfleet import gen, managed_fleet
from tests.test_execution_faults import set_faults
from tests.test_execution_pd import pd, pd_fleet
from tests.test_gateway_support import gateway_over_sim, start_gateway_process, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(sampling_ratio=1.0), exporter=exporter)
    tracing.configure_engine(TracingConfig(), exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def engine_spans(exporter: InMemorySpanExporter, n: int) -> list[ReadableSpan]:
    """The simulator exports `llm_request` when its sequence finishes, which may be just
    after the gateway answered: wait for it."""
    await wait_until(lambda: len(by_name(exporter, "llm_request")) >= n, "engine spans")
    return by_name(exporter, "llm_request")


async def test_gateway_request_continues_the_callers_trace_down_to_the_engine(
    spans: InMemorySpanExporter,
) -> None:
    async with gateway_over_sim(configs=gen(1)) as h, h.client() as c:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
        r = await c.post(
            "/v1/chat/completions",
            json={**body, "max_tokens": 5},
            headers={"traceparent": TRACEPARENT},
        )
        assert r.status_code == 200, r.text
        (engine,) = await engine_spans(spans, 1)
    (server,) = by_name(spans, "POST /v1/chat/completions")
    (request,) = by_name(spans, "sage_cp.request")
    (queue,) = by_name(spans, "sage_cp.queue")
    (decision,) = by_name(spans, "sage_cp.decision")
    (client,) = by_name(spans, "chat sim-model")
    # One trace, the caller's, unchanged.
    for s in (server, request, queue, decision, client, engine):
        assert format(s.context.trace_id, "032x") == TRACE_ID, s.name
    assert server.kind == SpanKind.SERVER and _hex(parent_of(server) or 0) == PARENT_ID
    assert parent_of(request) == server.context.span_id
    assert parent_of(queue) == parent_of(decision) == parent_of(client) == request.context.span_id
    # The engine's span is a child of our CLIENT attempt span, not a sibling.
    assert client.kind == SpanKind.CLIENT and engine.kind == SpanKind.SERVER
    assert parent_of(engine) == client.context.span_id
    a = client.attributes or {}
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "sim-model"
    assert a["gen_ai.usage.output_tokens"] == 5 and a["gen_ai.usage.input_tokens"] > 0
    assert list(a["gen_ai.response.finish_reasons"]) == ["length"]  # type: ignore[arg-type]
    assert a["server.address"] == "127.0.0.1" and isinstance(a["server.port"], int)
    d = decision.attributes or {}
    assert d["sage_cp.policy"] and d["sage_cp.router"] and d["sage_cp.instance_id"] == "sim-0"
    e = engine.attributes or {}
    assert e["gen_ai.usage.completion_tokens"] == 5
    assert 0 <= float(e["gen_ai.latency.time_in_queue"]) <= float(e["gen_ai.latency.e2e"])  # type: ignore[arg-type]
    assert "gen_ai.latency.time_to_first_token" in e
    assert (server.attributes or {})["http.response.status_code"] == 200
    # No prompt or output on any span without the opt-in.
    for s in spans.get_finished_spans():
        assert not any(ev.name in ("gen_ai.prompt", "gen_ai.completion") for ev in s.events)


async def test_streamed_and_embedding_requests_are_traced_to_the_engine(
    spans: InMemorySpanExporter,
) -> None:
    async with gateway_over_sim() as h, h.client() as c:
        body = {"model": "sim-model", "prompt": "a b c", "max_tokens": 4, "stream": True}
        async with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            _ = [line async for line in r.aiter_lines()]
        r = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": ["x y", "z"]})
        assert r.status_code == 200, r.text
        engines = await engine_spans(spans, 3)  # one completion + two embedding inputs
    (completion,) = by_name(spans, "text_completion sim-model")
    embed_clients = by_name(spans, "embeddings sim-embed")
    assert embed_clients, [s.name for s in spans.get_finished_spans()]
    parents = {parent_of(e) for e in engines}
    assert completion.context.span_id in parents
    assert {s.context.span_id for s in embed_clients} <= parents
    assert (completion.attributes or {})["gen_ai.usage.output_tokens"] == 4


async def test_a_retry_shows_two_attempts_the_first_marked_failed(
    spans: InMemorySpanExporter,
) -> None:
    async with managed_fleet(gen(2), max_attempts=3, retry_backoff_s=0.0) as (m, fleet):
        await set_faults(fleet, 0, error_rate=1.0)
        req = RequestMetadata(
            prompt="hello", model_name="sim-model", max_tokens=3, preferred_instance_id="sim-0"
        )
        await m.submit_request(req)
        res = await m.wait(req.request_id, timeout=30)
        assert res.state == "completed" and res.instance_id == "sim-1"
    attempts = sorted(by_name(spans, "text_completion sim-model"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["sage_cp.instance_id"] for s in attempts] == ["sim-0", "sim-1"]
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert (attempts[0].attributes or {})["http.response.status_code"] == 500
    assert attempts[1].status.status_code != StatusCode.ERROR
    decisions = by_name(spans, "sage_cp.decision")
    assert [(d.attributes or {})["sage_cp.attempt"] for d in decisions] == [1, 2]
    assert list((decisions[1].attributes or {})["sage_cp.excluded"]) == ["sim-0"]  # type: ignore[arg-type]
    (request,) = by_name(spans, "sage_cp.request")
    assert parent_of(request) is None  # no caller context: the request span is the root
    assert {parent_of(s) for s in attempts} == {request.context.span_id}
    assert (request.attributes or {})["sage_cp.attempts"] == 2


async def test_disaggregated_request_shows_both_legs(spans: InMemorySpanExporter) -> None:
    async with managed_fleet(pd_fleet(), **pd()) as (m, _fleet):
        res = await m.generate(
            " ".join(f"w{i}" for i in range(600)), model_name="sim-model", max_tokens=4
        )
        assert res.state == "completed"
        engines = await engine_spans(spans, 2)
    legs = {
        (s.attributes or {})["sage_cp.pd_leg"]: s
        for s in by_name(spans, "text_completion sim-model")
    }
    assert set(legs) == {"prefill", "decode"}
    assert (legs["prefill"].attributes or {})["sage_cp.instance_id"] == "sim-0"
    assert (legs["decode"].attributes or {})["sage_cp.instance_id"] == "sim-1"
    assert {parent_of(e) for e in engines} == {s.context.span_id for s in legs.values()}
    (decision,) = by_name(spans, "sage_cp.decision")
    d = decision.attributes or {}
    assert d["sage_cp.decision"] == "LaunchSplit" and d["sage_cp.prefill_instance_id"] == "sim-0"


async def test_excluded_paths_and_ratio_zero_make_no_spans() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(sampling_ratio=1.0), exporter=exporter)
    try:
        async with gateway_over_sim(configs=gen(1)) as h, h.client() as c:
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
        assert exporter.get_finished_spans() == ()
    finally:
        tracing.shutdown()
    tracing.configure(TracingConfig(sampling_ratio=0.0), exporter=exporter)
    try:
        async with gateway_over_sim(configs=gen(1)) as h, h.client() as c:
            r = await c.post("/v1/completions", json={"model": "sim-model", "prompt": "x"})
            assert r.status_code == 200
        assert exporter.get_finished_spans() == ()
    finally:
        tracing.shutdown()


def test_tracing_off_never_imports_opentelemetry() -> None:
    """A request end to end with tracing off, in a fresh interpreter: no OTel module loaded."""
    code = """
import asyncio, sys
from tests.simfleet import gen, managed_fleet
async def main():
    async with managed_fleet(gen(1)) as (m, _):
        res = await m.generate("hello", max_tokens=2)
        assert res.state == "completed", res
asyncio.run(main())
loaded = sorted(n for n in sys.modules if n.startswith("opentelemetry"))
assert not loaded, loaded
print("ok")
"""
    env_off = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_off, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_bad_tracing_settings_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="excluded paths must start"):
        TracingConfig(excluded_paths=["health"])
    with pytest.raises(ValueError, match="sampling_ratio"):
        TracingConfig(sampling_ratio=1.5)
    assert TracingConfig(otlp_traces_protocol="http/protobuf").protocol() == "http"  # type: ignore[arg-type]


def test_gateway_process_exports_to_a_real_otlp_receiver(tmp_path: Path) -> None:
    """`sage-cp serve --otlp-traces-endpoint` (OTLP gRPC, the default) with its embedded
    simulated fleet, against a real OTLP/gRPC receiver in this process."""
    cfg = write_config(tmp_path / "fleet.yaml", time_scale=0.02)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with Receiver() as rx:
        gp = start_gateway_process(
            "--config", str(cfg), "--otlp-traces-endpoint", rx.endpoint, env=env
        )
        try:
            with httpx.Client(base_url=gp.url, timeout=60) as c:
                r = c.post(
                    "/v1/completions",
                    json={"model": "sim-model", "prompt": "hello there", "max_tokens": 3},
                    headers={"traceparent": TRACEPARENT},
                )
                assert r.status_code == 200, r.text
        finally:
            gp.proc.send_signal(signal.SIGINT)  # graceful stop flushes the batched spans
            gp.proc.wait(timeout=60)
        wait_until_sync(lambda: bool(rx.named("llm_request")), "engine span received")
        (server,) = rx.named("POST /v1/completions")
        (client,) = rx.named("text_completion sim-model")
        (engine,) = rx.named("llm_request")
    assert server["trace_id"] == client["trace_id"] == engine["trace_id"] == TRACE_ID
    assert server["parent_id"] == PARENT_ID
    assert engine["parent_id"] == client["span_id"]
    assert server["service"] == "sage-cp" and engine["service"] == "sage-cp-sim"


async def test_error_bodies_and_log_records_carry_the_trace_id(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sage_cp_plugin")
    async with gateway_over_sim(configs=gen(1), max_attempts=1) as h, h.client() as c:
        await set_faults(h.fleet, 0, error_rate=1.0)
        r = await c.post(
            "/v1/completions",
            json={"model": "sim-model", "prompt": "x", "max_tokens": 2},
            headers={"traceparent": TRACEPARENT, "x-request-id": "req-42"},
        )
    assert r.status_code >= 500, r.text
    err = r.json()["error"]
    assert err["trace_id"] == TRACE_ID and err["request_id"] == "req-42"
    about = [rec for rec in caplog.records if "req-42" in rec.getMessage()]
    assert about, [rec.getMessage() for rec in caplog.records]
    assert {getattr(rec, "trace_id", None) for rec in about} == {TRACE_ID}
    (attempt,) = by_name(spans, "text_completion sim-model")
    assert attempt.status.status_code == StatusCode.ERROR
    (request,) = by_name(spans, "sage_cp.request")
    assert (request.attributes or {})["sage_cp.status"] == "failed"


def test_batch_job_and_pipeline_batch_spans_parent_their_requests(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    from sage_cp_plugin.entrypoints.batch import BatchJobOptions, run_batch_job
    from sage_cp_plugin.operators import ControlPlaneService
    from sage_cp_plugin.operators.testing import inprocess_fleet

    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "sim-model", "messages": [{"role": "user", "content": f"q{i}"}],
                     "max_tokens": 3},
        }
        for i in range(4)
    ]  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    opts = BatchJobOptions(
        input=src, output=tmp_path / "out.jsonl", manager_factory=inprocess_fleet(), progress=False
    )
    assert run_batch_job(opts).written == 4
    (job,) = by_name(spans, "sage_cp.batch_job")
    requests = by_name(spans, "sage_cp.request")
    assert len(requests) == 4
    assert {parent_of(r) for r in requests} == {job.context.span_id}
    assert {r.context.trace_id for r in requests} == {job.context.trace_id}
    spans.clear()
    with ControlPlaneService(manager_factory=inprocess_fleet()) as svc:
        records = svc.run_batch(["a b", "c d", "e f"], model="sim-model")
    assert all(r.error is None for r in records)
    (batch,) = by_name(spans, "sage_cp.pipeline_batch")
    assert (batch.attributes or {})["sage_cp.batch.size"] == 3
    requests = by_name(spans, "sage_cp.request")
    assert len(requests) == 3 and {parent_of(r) for r in requests} == {batch.context.span_id}


def test_sage_cp_batch_traces_from_the_otel_variables_alone(tmp_path: Path) -> None:
    """`sage-cp batch` with no config file and only OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set
    exports the job's span and its requests' spans to a real OTLP/gRPC receiver (as
    `sage-cp serve` does); a bad variable is refused at start with exit code 2."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "sim-model", "max_tokens": 2,
                             "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
        for i in range(3)
    ))  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    cmd = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "batch", str(src),
           "--output", str(tmp_path / "out.jsonl"), "--no-progress"]  # fmt: skip
    with Receiver() as rx:
        env = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.endpoint}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        wait_until_sync(lambda: bool(rx.named("sage_cp.batch_job")), "batch job span received")
        (job,) = rx.named("sage_cp.batch_job")
        wait_until_sync(lambda: len(rx.named("sage_cp.request")) == 3, "3 request spans")
        requests = rx.named("sage_cp.request")
    assert {r["trace_id"] for r in requests} == {job["trace_id"]}
    assert {r["parent_id"] for r in requests} == {job["span_id"]}
    bad = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://127.0.0.1:4317"}
    proc = subprocess.run(cmd, env=bad, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in proc.stderr, (
        proc.stderr
    )


def test_standard_otel_variables_configure_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(k)
    assert TracingConfig().endpoint() is None  # nothing set: off
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    cfg = TracingConfig()
    assert (cfg.endpoint(), cfg.protocol(), cfg.ratio()) == ("http://127.0.0.1:4318", "http", 0.25)
    # Explicit settings win over the variables.
    cfg = TracingConfig(otlp_traces_endpoint="http://127.0.0.1:4317", sampling_ratio=1.0)
    assert (cfg.endpoint(), cfg.ratio()) == ("http://127.0.0.1:4317", 1.0)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert TracingConfig(otlp_traces_endpoint="http://127.0.0.1:4317").endpoint() is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracing.configure(TracingConfig())
    assert not tracing.enabled()


async def test_prompts_and_outputs_only_with_the_opt_in() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(capture_content=True), exporter=exporter)
    try:
        async with managed_fleet(gen(1)) as (m, _):
            res = await m.generate("tell me", model_name="sim-model", max_tokens=3)
            assert res.state == "completed"
    finally:
        tracing.shutdown()
    (request,) = by_name(exporter, "sage_cp.request")
    (attempt,) = by_name(exporter, "text_completion sim-model")
    prompt = [e for e in request.events if e.name == "gen_ai.prompt"]
    assert prompt and (prompt[0].attributes or {})["gen_ai.prompt"] == "tell me"
    done = [e for e in attempt.events if e.name == "gen_ai.completion"]
    assert done and (done[0].attributes or {})["gen_ai.completion"] == res.output


async def test_a_callers_unsampled_decision_is_kept(spans: InMemorySpanExporter) -> None:
    """Parent-based sampling: ratio 1.0, but the caller's traceparent says "not sampled", so
    neither we nor the engine record anything for it."""
    async with gateway_over_sim(configs=gen(1)) as h, h.client() as c:
        r = await c.post(
            "/v1/completions",
            json={"model": "sim-model", "prompt": "x", "max_tokens": 2},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"},
        )
        assert r.status_code == 200
        r = await c.post(
            "/v1/completions", json={"model": "sim-model", "prompt": "y", "max_tokens": 2}
        )
        assert r.status_code == 200
        await engine_spans(spans, 1)  # the second, sampled request's engine span
    assert all(format(s.context.trace_id, "032x") != TRACE_ID for s in spans.get_finished_spans())
    assert len(by_name(spans, "llm_request")) == 1


async def test_unsampled_requests_get_no_spans_but_pass_the_flag_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ratio 0: the gateway records nothing, yet every attempt still sends a traceparent
    with the unsampled flag (the caller's trace id when it sent one), so the engine does
    not start traces of its own."""
    from sage_cp_plugin.tracing import spans as hooks

    sent: list[str] = []
    real = hooks.attempt_headers

    def recording(span: object, base: dict[str, str]) -> dict[str, str]:
        headers = real(span, base)
        sent.append(headers["traceparent"])
        return headers

    monkeypatch.setattr(hooks, "attempt_headers", recording)
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(sampling_ratio=0.0), exporter=exporter)
    tracing.configure_engine(TracingConfig(), exporter=exporter)
    try:
        async with gateway_over_sim(configs=gen(1)) as h, h.client() as c:
            body = {"model": "sim-model", "prompt": "x", "max_tokens": 2}
            assert (await c.post("/v1/completions", json=body)).status_code == 200
            r = await c.post(
                "/v1/completions",
                json={**body, "stream": True},
                headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            )
            assert r.status_code == 200  # the caller's sampled flag wins over ratio 0
            await engine_spans(exporter, 1)
            r = await c.post(
                "/v1/completions",
                json=body,
                headers={"traceparent": f"00-{TRACE_ID[::-1]}-{PARENT_ID}-00"},
            )
            assert r.status_code == 200
    finally:
        tracing.shutdown()

    def sampled(traceparent: str) -> bool:  # W3C: bit 0 of the flags (bit 1: random id)
        return bool(int(traceparent.rsplit("-", 1)[1], 16) & 1)

    assert len(sent) == 3
    assert not sampled(sent[0]) and TRACE_ID not in sent[0]  # a new trace, not sampled
    assert sent[1].startswith(f"00-{TRACE_ID}-") and sampled(sent[1])
    assert sent[2].startswith(f"00-{TRACE_ID[::-1]}-") and not sampled(sent[2])
    recorded = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()}
    assert recorded == {TRACE_ID}  # only the sampled request, engine span included


async def test_tracing_switched_on_after_the_manager_was_built_ends_request_spans() -> None:
    exporter = InMemorySpanExporter()
    async with managed_fleet(gen(1)) as (m, _):
        tracing.configure(TracingConfig(sampling_ratio=1.0), exporter=exporter)
        try:
            res = await m.generate("hello", max_tokens=2)
            assert res.state == "completed"
        finally:
            tracing.shutdown()
    (request,) = by_name(exporter, "sage_cp.request")
    assert (request.attributes or {})["sage_cp.status"] == "completed"
    assert len(by_name(exporter, "sage_cp.queue")) == 1
