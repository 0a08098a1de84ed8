"""Settings of one gateway process (the `sage-cp serve` flags), validated at the boundary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"  # loopback unless told otherwise: no accidental exposure
    port: int = Field(8080, ge=0, le=65535)
    api_key: str | None = None
    admin_key: str | None = None
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    # The gateway awaits each result directly; the manager needs to keep only a few finished
    # results around (for /admin lookups), so memory stays flat under sustained load.
    result_retention: int = Field(4096, gt=0)
    max_pending_requests: int | None = Field(None, gt=0)
    drain_check_interval_s: float = Field(0.05, gt=0)
    # False: a client asking for one answer gets it from one non-streamed upstream call
    # (~3x less executor work per request), but then TTFT/TPOT of those requests are not
    # measured and the SLO policies learn only from streamed ones.
    upstream_streaming: bool = True
    log_level: str = "warning"

    @field_validator("api_key", "admin_key")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("an API key must not be empty")
        return v
