"""The simulator's engine span, shaped like vLLM's (vllm/tracing.py, `llm_request`): a
SERVER span child of the `traceparent` the request came with, exported when the request
finishes, carrying the engine's own timings (gen_ai.latency.*)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from sage_cp_plugin.tracing import state

SimSequence = Any  # sim.sequence.SimSequence; the simulator imports this module


def trace_request(headers: Mapping[str, str], seq: SimSequence, model: str) -> None:
    """Emit `llm_request` for `seq` once it is done (only when the request carries a
    trace context, as vLLM does)."""
    tracer = state.ENGINE_TRACER
    if tracer is None or "traceparent" not in headers:
        return
    from opentelemetry import propagate

    parent = propagate.extract(dict(headers))
    seq.done.add_done_callback(lambda _f: _export(tracer, parent, seq, model))


def _export(tracer: Any, parent: Any, seq: SimSequence, model: str) -> None:
    from opentelemetry.trace import SpanKind

    now = asyncio.get_running_loop().time()
    wall_ns = time.time_ns()

    def wall(t: float) -> int:
        return wall_ns - int((now - t) * 1e9)

    attrs: dict[str, Any] = {
        "gen_ai.response.model": model,
        "gen_ai.request.id": seq.request_id,
        "gen_ai.request.max_tokens": seq.max_tokens,
        "gen_ai.usage.prompt_tokens": seq.prompt_len,
        "gen_ai.usage.completion_tokens": seq.num_output,
        "gen_ai.latency.e2e": now - seq.arrival,
    }
    if seq.first_scheduled is not None:
        attrs["gen_ai.latency.time_in_queue"] = seq.first_scheduled - seq.arrival
    if seq.first_token is not None:
        attrs["gen_ai.latency.time_to_first_token"] = seq.first_token - seq.arrival
        if seq.first_scheduled is not None:
            attrs["gen_ai.latency.time_in_model_prefill"] = seq.first_token - seq.first_scheduled
        if seq.last_token is not None:
            attrs["gen_ai.latency.time_in_model_decode"] = seq.last_token - seq.first_token
    if seq.finish_reason is not None:
        attrs["gen_ai.response.finish_reasons"] = [seq.finish_reason]
    span = tracer.start_span(
        "llm_request",
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attrs,
        start_time=wall(seq.arrival),
    )
    span.end(end_time=wall_ns)
