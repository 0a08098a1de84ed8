"""Real vLLM (0.32, CPU) exporting its `llm_request` span to a real OTLP/gRPC receiver:
the span is a child of our CLIENT attempt span (the traceparent we send is the attempt's).
A dedicated instance is started with `--otlp-traces-endpoint` (the shared ones are not)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from vllm_fleet import VllmFleet

from sage_cp_plugin import tracing
from sage_cp_plugin.tracing import TracingConfig
from tests.e2e.test_control_plane_e2e import manager_for
from tests.helpers import wait_until
from tests.otlp_receiver import Receiver

pytestmark = pytest.mark.e2e


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


async def test_vllm_llm_request_span_is_a_child_of_our_attempt(
    vllm_fleet: VllmFleet, receiver: Receiver, tiny_model_name: str
) -> None:
    inst = await asyncio.to_thread(
        vllm_fleet.start,
        "general",
        "traced-0",
        extra_args=["--otlp-traces-endpoint", receiver.endpoint],
        # vLLM's own test sets this: the receiver speaks plain gRPC (no TLS) on loopback.
        extra_env={"OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"},
    )
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(), exporter=exporter)
    try:
        m = await manager_for({"t0": f"http://127.0.0.1:{inst.port}"}, tiny_model_name)
        try:
            res = await m.generate("The trace of", model_name=tiny_model_name, max_tokens=4)
            assert res.state == "completed", res.error
        finally:
            await m.stop()
        (attempt,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
        # vLLM exports through a batch processor: wait for it (its schedule delay is 5 s).
        await wait_until(lambda: bool(receiver.named("llm_request")), "vLLM's llm_request")
        (engine,) = receiver.named("llm_request")
        assert engine["trace_id"] == format(attempt.context.trace_id, "032x")
        assert engine["parent_id"] == format(attempt.context.span_id, "016x")
        assert "gen_ai.latency.time_in_queue" in engine["attributes"]
    finally:
        tracing.shutdown()
        await asyncio.to_thread(vllm_fleet.stop, inst.name)
