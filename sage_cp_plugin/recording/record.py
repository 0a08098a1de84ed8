"""One line of the request log: what arrived, what was decided, what happened.

The request log (`recording.writer`, enabled by `ControlPlaneOptions.request_log`) writes one
`RequestLogRecord` per finished request as JSON Lines. The format is a superset of the
project's workload format (`workloads.format.WorkloadRecord`): `recording.importer` turns a
log back into a workload for `sage-cp replay`, and `sage-cp sim calibrate` fits the
simulator's step-time model from its timings.

Privacy: the prompt's text is never written unless `request_log_text` is set; instead
`prefix_hashes` holds salted, chained hashes of its full `block_tokens`-token blocks (equal
leading hashes mean a shared prefix, as vLLM's block hashes do), so sharing can be replayed
without the text.

Stability: other tools read this model (cost prediction, A/B reports). Fields are only ever
added, with defaults; `schema_version` is bumped when a meaning changes. Unknown fields are
ignored on reading so an older reader takes a newer log.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.types import RequestKind, RequestPriority, RequestStatus

SCHEMA_VERSION = 1
RecordSource = Literal["gateway", "api", "batch"]


class LoggedDecision(BaseModel):
    """Where the request ran and who chose it (the attempt that answered, or the last one)."""

    model_config = ConfigDict(extra="ignore")

    instance_id: str | None = None
    policy: str = ""
    router: str = ""
    phase: str | None = None  # prefill/decode for a disaggregated split, else None
    prefill_instance_id: str | None = None  # set when the prompt was prefilled elsewhere


class LoggedTimings(BaseModel):
    """Milliseconds on the coordinator's clock (same meanings as `types.RequestTimings`)."""

    model_config = ConfigDict(extra="ignore")

    queue_ms: float | None = None
    prefill_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None


class RequestLogRecord(BaseModel):
    """One finished request. `arrival_s` is seconds since the log's epoch (the first request
    seen by this coordinator), so a log replays as a workload without re-basing;
    `arrival_unix` is the wall-clock arrival for joining with other logs."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    request_id: str
    source: RecordSource = "api"
    arrival_s: float = Field(ge=0.0)
    arrival_unix: float | None = None
    # what was asked
    model: str | None = None
    kind: RequestKind = RequestKind.CHAT
    stream: bool = False
    priority: RequestPriority = RequestPriority.NORMAL
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    deadline_ms: float | None = None
    user_id: str | None = None
    tenant: str | None = None  # the `tenant` tag when given, else None
    billing_tier: str = "standard"
    tags: dict[str, Any] = Field(default_factory=dict)
    arm: str | None = None  # experiment arm (A/B), when an experiment assigned one
    input_tokens: int = Field(default=0, ge=0)
    input_tokens_source: Literal["engine", "estimate"] = "estimate"
    max_tokens: int | None = None
    output_tokens: int = Field(default=0, ge=0)  # generated (usage), 0 when unknown
    block_tokens: int = Field(default=512, gt=0)
    prefix_hashes: list[int] = Field(default_factory=list)
    prompt: str | None = None  # only with `request_log_text`
    # what was decided and what happened
    decision: LoggedDecision = Field(default_factory=LoggedDecision)
    timings: LoggedTimings = Field(default_factory=LoggedTimings)
    state: RequestStatus = RequestStatus.COMPLETED
    error_type: str | None = None
    status_code: int | None = None
    attempts: int = 0
    slo_met: bool | None = None
    cost: float | None = None
