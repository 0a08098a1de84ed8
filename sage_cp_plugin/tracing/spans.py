"""The control plane's spans, one hook per step of a request (docs/tracing.md).

    [SERVER POST /v1/chat/completions]     gateway middleware (asgi.py), caller's context
      sage_cp.request                      admission .. result (INTERNAL)
        sage_cp.queue                      admission .. dispatch
        sage_cp.decision                   each dispatch: policy, router, chosen, runner-up
        chat <model>  (CLIENT)             each attempt; traceparent sent to the engine
          llm_request (SERVER)             the engine's own span (vLLM or the simulator)

Every hook returns at its first line when tracing is off (`state.TRACER is None`).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from sage_cp_plugin.tracing import state
from sage_cp_plugin.types import RequestKind

if TYPE_CHECKING:
    from sage_cp_plugin.types import ExecutionInstance, RequestMetadata, RequestResult

# The queued request (pending.QueuedRequest) and the attempt's outcome (attempt_outcome.Outcome)
# are typed Any here: the request path imports this module, so importing theirs back
# would be a cycle (tests/test_architecture.py).
QueuedRequest = Any
Outcome = Any

# GenAI semantic conventions: gen_ai.operation.name per request kind.
OPERATION = {
    RequestKind.CHAT: "chat",
    RequestKind.COMPLETION: "text_completion",
    RequestKind.EMBEDDING: "embeddings",
}


class RequestTrace:
    """What a queued request carries while traced: its span and the context to run in.

    Unsampled (`recording` False): no span at all, only the `traceparent` to pass on, so
    the engine sees the unsampled flag and records nothing either; every hook then returns
    after one attribute test (the cost of an unsampled request is the middleware's sampling
    decision and this string, docs/tracing.md "Cost")."""

    __slots__ = ("ctx", "queue", "recording", "span", "traceparent")

    def __init__(self, span: Any, ctx: Any, queue: Any) -> None:
        self.span = span
        self.ctx = ctx
        self.queue = queue
        self.recording = True
        self.traceparent: str | None = None

    @classmethod
    def unsampled(cls, span_context: Any) -> RequestTrace:
        tr = cls(None, None, None)
        tr.recording = False
        tr.traceparent = traceparent_of(span_context)
        return tr


def traceparent_of(span_context: Any) -> str:
    """The W3C `traceparent` of a span context (what the SDK's propagator writes)."""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def _request_attributes(req: RequestMetadata) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": OPERATION[req.request_kind],
        "sage_cp.request_id": req.request_id,
        "sage_cp.priority": req.priority.name,
    }
    if req.model_name is not None:
        attrs["gen_ai.request.model"] = req.model_name
    if req.max_tokens is not None and req.request_kind != RequestKind.EMBEDDING:
        attrs["gen_ai.request.max_tokens"] = req.max_tokens
    if req.user_id is not None:
        attrs["sage_cp.user_id"] = req.user_id
    return attrs


def on_admit(item: QueuedRequest) -> None:
    """Start the request's span (child of whatever is current: the gateway's SERVER span,
    a batch job's span, the caller's own) and its queue span; unsampled, no span."""
    tracer = state.TRACER
    if tracer is None:
        return
    from opentelemetry import trace

    parent = trace.get_current_span().get_span_context()
    if parent.is_valid and not parent.trace_flags.sampled:
        item.trace = RequestTrace.unsampled(parent)  # the caller's (or gateway's) decision
        return
    span = tracer.start_span("sage_cp.request")
    if not span.is_recording():  # a new trace the sampler dropped
        item.trace = RequestTrace.unsampled(span.get_span_context())
        return
    req = item.request
    span.set_attributes(_request_attributes(req))
    if state.CAPTURE_CONTENT:
        text = req.prompt if req.prompt is not None else str(req.messages)
        span.add_event("gen_ai.prompt", {"gen_ai.prompt": text})
    ctx = trace.set_span_in_context(span)
    queue = tracer.start_span("sage_cp.queue", context=ctx)
    item.trace = RequestTrace(span, ctx, queue)


def on_dispatch(
    item: QueuedRequest,
    action: Any,
    *,
    policy: str,
    router: str,
    candidates: list[tuple[str, float]],
) -> None:
    """The decision the dispatcher just applied: ends the queue span and records one
    decision span. `candidates` are (instance id, predicted wait in s) of the instances
    that could take the request, best first (planning's view; see dispatch.py)."""
    tr = item.trace
    if tr is None or not tr.recording or state.TRACER is None:
        return
    if tr.queue is not None:
        tr.queue.end()
        tr.queue = None
    attrs: dict[str, Any] = {
        "sage_cp.policy": policy,
        "sage_cp.router": router,
        "sage_cp.attempt": item.attempts + 1,
        "sage_cp.decision": type(action).__name__,
    }
    state_ = getattr(action, "state", None)
    if state_ is not None:
        attrs["sage_cp.instance_id"] = state_.instance_id
    pre, dec = getattr(action, "prefill", None), getattr(action, "decode", None)
    if pre is not None and dec is not None:
        attrs["sage_cp.prefill_instance_id"] = pre.instance_id
        attrs["sage_cp.instance_id"] = dec.instance_id
    reason = getattr(action, "reason", None)
    if reason is not None:
        attrs["sage_cp.reason"] = str(reason)
    chosen = attrs.get("sage_cp.instance_id")
    others = [c for c in candidates if c[0] != chosen]
    if others:
        attrs["sage_cp.runner_up"] = others[0][0]
    if candidates:
        attrs["sage_cp.candidates"] = [c[0] for c in candidates]
        attrs["sage_cp.candidates.predicted_wait_s"] = [c[1] for c in candidates]
    if item.excluded:
        attrs["sage_cp.excluded"] = sorted(item.excluded)
    state.TRACER.start_span("sage_cp.decision", context=tr.ctx, attributes=attrs).end()


def task_context(item: QueuedRequest) -> contextvars.Context | None:
    """The context an attempt task runs in: the request's span current, so the attempt's
    CLIENT span is its child (the dispatcher's own context knows nothing of the caller);
    unsampled, only the `traceparent` to send on."""
    tr = item.trace
    if tr is None:
        return None
    ctx = contextvars.copy_context()
    if not tr.recording:
        ctx.run(state.UNSAMPLED_TRACEPARENT.set, tr.traceparent)
        return ctx
    from opentelemetry import context

    ctx.run(context.attach, tr.ctx)
    return ctx


class Unsampled:
    """The attempt of an unsampled request: no span, its traceparent still sent on."""

    __slots__ = ("traceparent",)

    def __init__(self, traceparent: str) -> None:
        self.traceparent = traceparent


def start_attempt(
    request: RequestMetadata, instance: ExecutionInstance, extra: dict[str, Any] | None
) -> Any:
    """A CLIENT span for one HTTP call to an engine (None when off; `Unsampled` when the
    request is not sampled)."""
    tracer = state.TRACER
    if tracer is None:
        return None
    unsampled = state.UNSAMPLED_TRACEPARENT.get()
    if unsampled is not None:
        return Unsampled(unsampled)
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    parent = trace.get_current_span().get_span_context()
    if parent.is_valid and not parent.trace_flags.sampled:
        return Unsampled(traceparent_of(parent))
    op = OPERATION[request.request_kind]
    model = request.model_name or ""
    span = tracer.start_span(f"{op} {model}".strip(), kind=SpanKind.CLIENT)
    if not span.is_recording():  # a new trace (no request span: a bare executor call)
        return Unsampled(traceparent_of(span.get_span_context()))
    attrs = _request_attributes(request)
    attrs["sage_cp.instance_id"] = instance.instance_id
    url = instance.base_url
    host, _, port = url.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
    if host and port.isdigit():
        attrs["server.address"], attrs["server.port"] = host, int(port)
    if extra and "kv_transfer_params" in extra:
        params = extra["kv_transfer_params"] or {}
        attrs["sage_cp.pd_leg"] = "prefill" if params.get("do_remote_decode") else "decode"
    span.set_attributes(attrs)
    return span


def carrier() -> dict[str, str] | None:
    """The current trace context as a W3C carrier, to continue it in another process
    (`sage-cp serve --workers N`: worker -> scheduler -> worker). None when tracing is off
    or nothing is traced; an unsampled context travels as its bare `traceparent`."""
    if state.TRACER is None:
        return None
    unsampled = state.UNSAMPLED_TRACEPARENT.get()
    if unsampled is not None:
        return {"traceparent": unsampled}
    from opentelemetry import propagate, trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    if not ctx.trace_flags.sampled:
        return {"traceparent": traceparent_of(ctx)}
    out: dict[str, str] = {}
    propagate.inject(out)
    return out


def attach(carrier: dict[str, str] | None) -> object | None:
    """Make the context of `carrier` (from `carrier()` in another process) current; the
    token for `detach`. None, at once, when there is nothing to attach (tracing off)."""
    if carrier is None or state.TRACER is None:
        return None
    from opentelemetry import context, propagate

    return context.attach(propagate.extract(carrier))


def detach(token: object | None) -> None:
    if token is not None:
        from opentelemetry import context

        context.detach(token)  # type: ignore[arg-type]


def attempt_headers(span: Any, base: dict[str, str]) -> dict[str, str]:
    """`base` plus the W3C `traceparent` of the attempt's span: the engine's span becomes
    its child (not a sibling)."""
    headers = dict(base)
    if isinstance(span, Unsampled):
        headers["traceparent"] = span.traceparent
        return headers
    from opentelemetry import propagate, trace

    propagate.inject(headers, context=trace.set_span_in_context(span))
    return headers


def end_attempt(span: Any, out: Outcome | None, error: BaseException | None) -> None:
    if span is None or isinstance(span, Unsampled):
        return
    from opentelemetry.trace import Status, StatusCode

    if out is not None and span.is_recording():
        span.set_attribute("gen_ai.usage.input_tokens", out.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", out.completion_tokens)
        data = out.response or {}
        if data.get("model"):
            span.set_attribute("gen_ai.response.model", str(data["model"]))
        reasons = [str(c.get("finish_reason")) for c in data.get("choices") or () if c]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        if out.first_token_at is not None:
            span.set_attribute("sage_cp.ttft_s", out.first_token_at - out.started_at)
        if state.CAPTURE_CONTENT and out.text is not None:
            span.add_event("gen_ai.completion", {"gen_ai.completion": out.text})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.set_attribute("error.type", type(error).__name__)
        code = getattr(error, "status_code", None)
        if code is not None:
            span.set_attribute("http.response.status_code", code)
        span.record_exception(error)
    span.end()


def on_result(item: QueuedRequest, result: RequestResult) -> None:
    """ResultStore observer: the request ended, so does its span."""
    tr = item.trace
    if tr is None:
        return
    item.trace = None
    if not tr.recording:
        return
    from opentelemetry.trace import Status, StatusCode

    if tr.queue is not None:
        tr.queue.end()
        tr.queue = None
    span = tr.span
    if span.is_recording():
        span.set_attribute("sage_cp.status", result.state.value)
        span.set_attribute("sage_cp.attempts", result.attempts)
        if result.instance_id is not None:
            span.set_attribute("sage_cp.instance_id", result.instance_id)
        span.set_attribute("gen_ai.usage.input_tokens", result.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.completion_tokens)
        if result.error is not None:
            span.set_status(Status(StatusCode.ERROR, result.error))
            if result.error_type:
                span.set_attribute("error.type", result.error_type)
    span.end()
