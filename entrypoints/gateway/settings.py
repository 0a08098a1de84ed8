"""Settings of one gateway process (the `sage-cp serve` flags), validated at the boundary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .connections import ConnectionLimits
from .schemas import DEFAULT_MAX_EMBEDDING_CHARS, DEFAULT_MAX_EMBEDDING_INPUTS

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# What all requests in flight may hold (bodies, embedding answers): see inflight.py.
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024


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
    # ... and in bytes: embedding answers are large (a vector value costs ~32 bytes here).
    # Small: a resent embeddings request re-runs the parts no longer retained, and this
    # memory comes on top of the in-flight budget.
    result_retention_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # One embeddings request: at most this many inputs and characters (OpenAI's limits).
    max_embedding_inputs: int = Field(DEFAULT_MAX_EMBEDDING_INPUTS, gt=0)
    max_embedding_chars: int = Field(DEFAULT_MAX_EMBEDDING_CHARS, gt=0)
    max_inflight_bytes: int = Field(DEFAULT_MAX_INFLIGHT_BYTES, gt=0)
    # Connection limits (see connections.py).
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    keep_alive_s: float = Field(30.0, gt=0)
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    max_connections: int = Field(4096, gt=0)
    max_pending_requests: int | None = Field(None, gt=0)
    drain_check_interval_s: float = Field(0.05, gt=0)
    # Freeze start-up objects out of garbage collection once serving (gc_policy.py).
    gc_freeze: bool = True
    # False: a client asking for one answer gets it from one non-streamed upstream call
    # (~3x less executor work per request), but then TTFT/TPOT of those requests are not
    # measured and the SLO policies learn only from streamed ones.
    upstream_streaming: bool = True
    log_level: str = "warning"
    # Replicas on several hosts share fleet state through Redis (`fleetshare`); None: alone.
    redis_url: str | None = None
    redis_namespace: str = Field("sagecp", min_length=1)
    replica_id: str | None = Field(None, min_length=1)
    # Where peers reach this replica to hand it requests whose id it claimed (handover.py);
    # None: http://<bind host>:<bound port> (a wildcard bind: the host name).
    advertise_url: str | None = Field(None, pattern=r"^https?://")
    # How long a request-id claim lives in the shared store (fleetshare/claims.py).
    request_claim_ttl_s: float = Field(600.0, gt=0)

    @field_validator("api_key", "admin_key")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v != v.strip()):
            raise ValueError(
                "an API key must not be empty or start/end with whitespace (an empty key "
                "would silently turn authentication off); omit the option to run without one"
            )
        return v

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_s=self.keep_alive_s,
            max_header_bytes=self.max_header_bytes,
            max_connections=self.max_connections,
        )

    def auth_summary(self) -> str:
        """One line for the start-up banner: what is protected and what is open."""
        v1 = "/v1 requires an API key" if self.api_key else "/v1 is OPEN (no --api-key)"
        admin = "/admin requires the admin key" if self.admin_key else "/admin is disabled"
        return f"auth: {v1}; {admin}"
