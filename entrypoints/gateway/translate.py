"""An OpenAI request body plus `x-sage-*` headers -> one `RequestMetadata`.

Scheduling inputs come from headers or from extra body fields. A header wins over the body
field of the same meaning: headers are what a trusted proxy in front of the gateway sets
(per-tenant priority, budgets), and it must be able to override what the client put in the
body. Fields the control plane consumes (`priority`, SLOs, budget) are not forwarded to vLLM
(vLLM rejects `priority` unless it runs priority scheduling); every other unknown body field
(`stop`, `seed`, `logprobs`, ...) passes through unchanged. The body is validated once, by
`RequestMetadata`, to keep the per-request cost low.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers

from sage_cp_plugin.types import RequestKind, RequestMetadata, RequestPriority

from .errors import GatewayError

# header -> (RequestMetadata field, parser name)
HEADERS: dict[str, str] = {
    "x-sage-priority": "priority",
    "x-sage-slo-ttft-ms": "ttft_slo_ms",
    "x-sage-slo-tpot-ms": "tpot_slo_ms",
    "x-sage-deadline-ms": "slo_deadline_ms",
    "x-sage-user": "user_id",
    "x-sage-cost-budget": "cost_budget",
}
# Extra body fields with the same meaning (RequestMetadata's own names; `user` is OpenAI's).
BODY_FIELDS: tuple[str, ...] = (
    "priority",
    "ttft_slo_ms",
    "tpot_slo_ms",
    "slo_deadline_ms",
    "user_id",
    "cost_budget",
)
_FLOAT_FIELDS = frozenset({"ttft_slo_ms", "tpot_slo_ms", "slo_deadline_ms", "cost_budget"})
# Keys mapped onto RequestMetadata fields rather than passed through in extra_body.
_CONSUMED = frozenset(
    {"model", "prompt", "messages", "input", "max_tokens", "temperature", "top_p", "stream"}
)


def _header_value(name: str, field: str, raw: str) -> Any:
    if field == "user_id":
        return raw
    if field == "priority":
        try:
            return RequestPriority(raw)  # type: ignore[arg-type]  # names accepted (_missing_)
        except ValueError:
            names = ", ".join(p.name.lower() for p in RequestPriority)
            raise GatewayError(
                400,
                f"header {name}: {raw!r} is not a priority; use one of {names} or 0-4",
                param=name,
                code="invalid_header",
            ) from None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise GatewayError(
            400,
            f"header {name}: {raw!r} must be a positive number",
            param=name,
            code="invalid_header",
        )
    return value


def scheduling_fields(body: dict[str, Any], headers: Headers) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in BODY_FIELDS:
        if key in body:
            value = body.pop(key)
            if value is not None:
                fields[key] = value
    if "user" in body and "user_id" not in fields and isinstance(body["user"], str):
        fields["user_id"] = body["user"]  # OpenAI's `user` stays in the body for vLLM too
    # One pass over the request's headers (most carry none of ours) instead of a lookup,
    # each a scan of every header, per name; the first of a repeated header counts, and
    # they are read in HEADERS' order, as `headers.get` per name did.
    given: dict[bytes, bytes] = {}
    for hkey, hvalue in headers.raw:
        if hkey.startswith(b"x-sage-") and hkey not in given:
            given[hkey] = hvalue
    if given:
        for name, field in HEADERS.items():
            value = given.get(name.encode())
            if value is not None:
                fields[field] = _header_value(name, field, value.decode("latin-1"))
    return fields


def _single_prompt(prompt: Any) -> Any:
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return prompt[0]
        raise GatewayError(
            400,
            "'prompt' must be a string or a list of one string: the control plane schedules "
            "one prompt per request (send one request per prompt; token-id prompts are not "
            "supported)",
            param="prompt",
            code="invalid_value",
        )
    return prompt


def _require(body: dict[str, Any], key: str, endpoint: str) -> Any:
    if body.get(key) is None:
        raise GatewayError(
            400, f"'{key}' is required by {endpoint}", param=key, code="missing_field"
        )
    return body[key]


def to_request(
    body: dict[str, Any], headers: Headers, kind: RequestKind, endpoint: str
) -> RequestMetadata:
    """Build the request; raises GatewayError or pydantic ValidationError on bad input."""
    fields = scheduling_fields(body, headers)
    fields["kind"] = kind
    fields["model_name"] = _require(body, "model", endpoint)
    if kind == RequestKind.EMBEDDING:
        inp = _require(body, "input", endpoint)
        if isinstance(inp, list) and not all(isinstance(x, str) for x in inp):
            raise GatewayError(
                400,
                "'input' must be a string or a list of strings (token-id input is not supported)",
                param="input",
                code="invalid_value",
            )
        fields["input"] = inp
    elif kind == RequestKind.CHAT:
        fields["messages"] = _require(body, "messages", endpoint)
        max_tokens = body.get("max_tokens", body.pop("max_completion_tokens", None))
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
    else:
        fields["prompt"] = _single_prompt(_require(body, "prompt", endpoint))
    if kind != RequestKind.EMBEDDING:
        for key in ("max_tokens", "temperature", "top_p", "stream"):
            value = body.get(key)
            if value is not None:
                fields[key] = value
    rid = headers.get("x-request-id")
    if rid:
        fields["request_id"] = rid
    extra = {k: v for k, v in body.items() if k not in _CONSUMED}
    if extra:
        fields["extra_body"] = extra
    return RequestMetadata(**fields)
