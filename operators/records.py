"""`ResultRecord`: what every operator emits per request, and its OpenAI batch-file line.

One record per input item, success or failure, so a sink can write "every line exactly
once". The OpenAI batch output format is `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}`; we add `timings` (queue/TTFT/TPOT/E2E in ms) beside them,
which readers of the standard format ignore.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.types import RequestResult, RequestStatus

# The manager keeps the upstream status only inside the message ("answered HTTP 400: ...").
_HTTP_STATUS = re.compile(r"answered HTTP (\d{3})")

_STATUS_BY_ERROR_TYPE = {
    "no_instance": 503,
    "stopped": 503,
    "rejected": 422,
    "timeout": 504,
    "cancelled": 499,
    "internal": 500,
}


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None


class ResultRecord(BaseModel):
    """The outcome of one input item."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str
    request_id: str | None = None
    kind: str | None = None
    status_code: int = 200
    body: dict[str, Any] | None = None
    output: str | None = None
    error: ErrorInfo | None = None
    timings: Timings = Field(default_factory=Timings)
    instance_id: str | None = None
    slo_met: bool | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    line: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(
        cls,
        custom_id: str,
        code: str,
        message: str,
        *,
        status_code: int = 400,
        line: int | None = None,
        request_id: str | None = None,
        kind: str | None = None,
    ) -> ResultRecord:
        return cls(
            custom_id=custom_id,
            request_id=request_id,
            kind=kind,
            status_code=status_code,
            error=ErrorInfo(code=code, message=message),
            line=line,
        )

    @classmethod
    def from_result(
        cls, custom_id: str, result: RequestResult, *, kind: str | None, line: int | None = None
    ) -> ResultRecord:
        t = result.timings
        rec = cls(
            custom_id=custom_id,
            request_id=result.request_id,
            kind=kind,
            body=result.response,
            output=result.output,
            timings=Timings(
                queue_ms=t.queue_ms, ttft_ms=t.ttft_ms, tpot_ms=t.tpot_ms, e2e_ms=t.e2e_ms
            ),
            instance_id=result.instance_id,
            slo_met=result.slo_met,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            line=line,
        )
        if result.state != RequestStatus.COMPLETED:
            message = result.error or f"request {result.state.value}"
            error_type = result.error_type or "upstream"
            match = _HTTP_STATUS.search(message)
            if match:
                status = int(match.group(1))
            else:
                status = _STATUS_BY_ERROR_TYPE.get(error_type, 502)
            rec.status_code = status
            rec.error = ErrorInfo(code=f"{error_type}_error", message=message)
            rec.body = None
        return rec

    def to_batch_line(self) -> dict[str, Any]:
        """The OpenAI batch output line (plus `timings`)."""
        rid = self.request_id or self.custom_id
        response: dict[str, Any] | None = None
        if self.body is not None or self.error is None:
            response = {"status_code": self.status_code, "request_id": rid, "body": self.body}
        elif self.status_code:
            err = self.error.model_dump() if self.error else None
            response = {"status_code": self.status_code, "request_id": rid, "body": {"error": err}}
        return {
            "id": f"batch_req_{rid}",
            "custom_id": self.custom_id,
            "response": response,
            "error": self.error.model_dump() if self.error else None,
            "timings": self.timings.model_dump(),
        }
