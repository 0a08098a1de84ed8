"""OpenAI-format error responses and the mapping from control-plane failures to HTTP codes.

Clients (the `openai` package, guidellm, SAGE's remote mode) branch on the status code and
read `error.message`; every failure the gateway returns goes through here so the body shape
and the status never disagree.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from sage_cp_plugin.errors import (
    ConfigurationError,
    ControlPlaneError,
    InvalidRequestBodyError,
    RequestTimeoutError,
    RetryLaterError,
    UpstreamError,
)
from sage_cp_plugin.rate_limits import RequestExceedsRateLimitError
from sage_cp_plugin.tracing.logs import error_fields
from sage_cp_plugin.types import RequestResult

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}

# Field names of RequestMetadata -> the OpenAI body field a client actually sent.
_PARAM_NAMES = {
    "model_name": "model",
    "user_id": "user",
    "ttft_slo_ms": "ttft_slo_ms",
    "tpot_slo_ms": "tpot_slo_ms",
}

# The executor reports an instance's HTTP answer only inside its message (see report: the core
# should carry it on RequestResult); 4xx answers are the client's fault and keep their code.
_UPSTREAM_CODE = re.compile(r"answered HTTP (\d{3})")


class GatewayError(Exception):
    """A failure decided by the gateway itself (bad body, auth, size)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code if code is not None else str(status),
            # Traced: the trace id and the caller's x-request-id (tracing/logs.py).
            **error_fields(),
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        json.dumps(error_body(status, message, param, code)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def retry_after_header(seconds: float) -> dict[str, str]:
    # Retry-After takes whole seconds (RFC 9110); round up so clients never come back early.
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def validation_error(exc: ValidationError) -> GatewayError:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field = loc[0] if loc else None
    param = _PARAM_NAMES.get(field, field) if field else None
    where = ".".join([param or "", *loc[1:]]) if param else "body"
    msg = f"invalid value for '{where}': {first['msg']} (got {first.get('input')!r})"
    if len(exc.errors()) > 1:
        msg += f"; and {len(exc.errors()) - 1} more problem(s)"
    return GatewayError(400, msg, param=param, code="invalid_value")


def exception_to_error(exc: Exception) -> GatewayError:
    """A control-plane exception raised at admission or while running -> HTTP error."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ValidationError):
        return validation_error(exc)
    if isinstance(exc, RetryLaterError):  # a full queue, a rate limit, a spent quota
        return GatewayError(
            429, str(exc), code=exc.code, headers=retry_after_header(exc.retry_after_s)
        )
    if isinstance(exc, RequestExceedsRateLimitError):
        return GatewayError(400, str(exc), param="max_tokens", code="rate_limit_exceeded")
    if isinstance(exc, UpstreamError):
        return upstream_error(str(exc), exc.status_code, exc.retry_after_s)
    if isinstance(exc, RequestTimeoutError):
        return GatewayError(504, str(exc), code="timeout")
    if isinstance(exc, ConfigurationError | InvalidRequestBodyError):
        return GatewayError(400, str(exc), code="invalid_request")
    if isinstance(exc, ControlPlaneError):
        status = int(getattr(exc, "status_code", 503))
        return GatewayError(status, str(exc), param="model" if status == 404 else None)
    return GatewayError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal")


def upstream_error(message: str, status: int | None, retry_after_s: float | None) -> GatewayError:
    if status is None:
        m = _UPSTREAM_CODE.search(message)
        status = int(m.group(1)) if m else None
    if status is None and "unreachable" in message:
        # Every attempt failed to connect: the fleet is down, not misbehaving.
        return GatewayError(503, message, code="upstream_unreachable")
    if status is None and "timed out" in message:
        return GatewayError(504, message, code="upstream_timeout")
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return GatewayError(status, message, code="upstream_rejected")
    if status == 429:
        return GatewayError(
            429,
            message,
            code="upstream_rate_limited",
            headers=retry_after_header(retry_after_s or 1),
        )
    return GatewayError(502, message, code="upstream_error")


def result_error(result: RequestResult) -> GatewayError:
    """A request that ended failed or cancelled -> the error the client sees."""
    msg = result.error or f"request {result.state.value}"
    kind = result.error_type or ""
    if kind == "no_instance":
        not_served = msg.startswith("no instance serves model")
        return GatewayError(
            404 if not_served else 503,
            msg,
            param="model" if not_served else None,
            code="model_not_found" if not_served else "no_healthy_instance",
        )
    if kind == "timeout":
        return GatewayError(504, msg, code="timeout")
    if kind == "invalid_request":
        return GatewayError(400, msg, code="invalid_request")
    if kind == "rejected":
        return GatewayError(422, msg, code="rejected_by_policy")
    if kind in ("stopped", "cancelled"):
        return GatewayError(503, msg, code=kind)
    if kind == "upstream":
        return upstream_error(msg, None, None)
    return GatewayError(500, msg, code=kind or "internal")
