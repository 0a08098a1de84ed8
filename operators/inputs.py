"""Turn whatever a stream carries into a `RequestMetadata` with a `custom_id`.

Accepted items: a string (the prompt, or the text to embed), a `RequestMetadata`, a dict of
request fields or an OpenAI request body, an OpenAI batch-file line (`custom_id`, `method`,
`url`, `body`), or a `SourceLine` from `JsonlSource`. Anything that cannot become a request
becomes a failed `ResultRecord` instead of an exception, so one bad item never stops a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sage_cp_plugin.types import RequestKind, RequestMetadata

from .records import ResultRecord

URL_KINDS: dict[str, RequestKind] = {
    "/v1/chat/completions": RequestKind.CHAT,
    "/v1/completions": RequestKind.COMPLETION,
    "/v1/embeddings": RequestKind.EMBEDDING,
}

# OpenAI body names that differ from RequestMetadata's.
_RENAMED = {"model": "model_name", "user": "user_id", "max_completion_tokens": "max_tokens"}
_REQUEST_FIELDS = set(RequestMetadata.model_fields) - {"extra_body", "kind", "stream"}
# Scheduling hints a batch line may carry beside its body (not part of the OpenAI format).
_LINE_HINTS = ("priority", "user_id", "slo_deadline_ms", "ttft_slo_ms", "tpot_slo_ms")


@dataclass(frozen=True)
class SourceLine:
    """One line of a JSONL file: its 1-based number and parsed object, or why it is bad."""

    line: int
    data: Any = None
    error: str | None = None


@dataclass(frozen=True)
class PreparedRequest:
    custom_id: str
    request: RequestMetadata
    line: int | None = None

    @property
    def kind(self) -> str:
        return self.request.request_kind.value


def _describe(exc: ValidationError, where: str) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        loc = f"{where}.{loc}" if loc else where
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def request_from_body(
    body: dict[str, Any], *, kind: RequestKind | None, hints: dict[str, Any] | None = None
) -> RequestMetadata:
    """A request from an OpenAI body; unknown body fields pass through to the instance."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = dict(body.get("extra_body") or {})
    for key, value in body.items():
        if key in ("stream", "stream_options", "extra_body"):
            continue  # batch results are whole answers; the executor decides streaming
        name = _RENAMED.get(key, key)
        if name in _REQUEST_FIELDS:
            fields[name] = value
        else:
            extra[key] = value
    fields.update(hints or {})
    if kind is not None:
        fields["kind"] = kind
    return RequestMetadata(**fields, extra_body=extra)


def prepare(
    item: Any,
    *,
    kind: RequestKind | str | None = None,
    model: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> PreparedRequest | ResultRecord:
    """`item` as a request, or a failed record saying why it cannot be one.

    `kind` is the operator's endpoint (chat/completion/embedding) for items that do not
    name one; `model` and `defaults` fill fields the item leaves out.
    """
    kind = None if kind is None else RequestKind(kind)
    line: int | None = None
    if isinstance(item, SourceLine):
        line = item.line
        if item.error is not None:
            return ResultRecord.failure(f"line-{line}", "invalid_json", item.error, line=line)
        item = item.data
    fallback_id = f"line-{line}" if line is not None else None

    if isinstance(item, RequestMetadata):
        return PreparedRequest(item.request_id, _with_defaults(item, model, defaults), line)
    if isinstance(item, str):
        target = kind or RequestKind.CHAT
        key = {"chat": "prompt", "completion": "prompt", "embedding": "input"}[target.value]
        req = RequestMetadata(**{key: item}, kind=target)
        return PreparedRequest(req.request_id, _with_defaults(req, model, defaults), line)
    if not isinstance(item, dict):
        return ResultRecord.failure(
            fallback_id or "unknown",
            "invalid_request",
            f"cannot make a request from a {type(item).__name__}; expected a string, a dict, "
            "a RequestMetadata or an OpenAI batch line",
            line=line,
        )

    raw_id = item.get("custom_id")
    custom_id = str(raw_id) if raw_id not in (None, "") else None
    is_batch_line = "body" in item or "url" in item or "method" in item
    try:
        if is_batch_line:
            req = _from_batch_line(item, custom_id or fallback_id)
        else:
            fields = {k: v for k, v in item.items() if k != "custom_id"}
            req = request_from_body(fields, kind=kind if "kind" not in fields else None)
    except _LineError as exc:
        return ResultRecord.failure(
            custom_id or fallback_id or "unknown", exc.code, str(exc), line=line
        )
    except ValidationError as exc:
        return ResultRecord.failure(
            custom_id or fallback_id or "unknown",
            "invalid_request",
            _describe(exc, "body" if is_batch_line else "request"),
            line=line,
        )
    if custom_id is None:
        custom_id = fallback_id or req.request_id
    return PreparedRequest(custom_id, _with_defaults(req, model, defaults), line)


class _LineError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _from_batch_line(item: dict[str, Any], custom_id: str | None) -> RequestMetadata:
    if custom_id is None:
        raise _LineError("missing_custom_id", "a batch line needs a non-empty 'custom_id'")
    method = str(item.get("method", "POST")).upper()
    if method != "POST":
        raise _LineError("invalid_method", f"method {method!r} is not supported; use POST")
    url = item.get("url")
    if url not in URL_KINDS:
        raise _LineError(
            "invalid_url",
            f"url {url!r} is not supported; use one of {', '.join(sorted(URL_KINDS))}",
        )
    body = item.get("body")
    if not isinstance(body, dict):
        raise _LineError("invalid_body", f"'body' must be a JSON object, got {type(body).__name__}")
    hints = {k: item[k] for k in _LINE_HINTS if k in item}
    return request_from_body(body, kind=URL_KINDS[url], hints=hints)


def _with_defaults(
    req: RequestMetadata, model: str | None, defaults: dict[str, Any] | None
) -> RequestMetadata:
    update: dict[str, Any] = {}
    if model is not None and req.model_name is None:
        update["model_name"] = model
    for key, value in (defaults or {}).items():
        if key not in req.model_fields_set:
            update[key] = value
    return req.model_copy(update=update) if update else req
