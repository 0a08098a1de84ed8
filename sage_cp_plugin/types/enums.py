"""The enums of the public types. Each accepts its member, its value and its name in any case,
because the sageLLM document's examples use all three."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any


class _LenientEnumMixin:
    """Lets an enum be built from its name in any case, besides its value."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            key = value.strip()
            for member in cls:  # type: ignore[attr-defined]
                if member.name.lower() == key.lower() or str(member.value).lower() == key.lower():
                    return member
            if key.lstrip("-").isdigit():
                return cls(int(key))  # type: ignore[call-arg]
        return None


class RequestPriority(_LenientEnumMixin, IntEnum):
    """Lower value = more urgent (the document's numbering)."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4


class RequestStatus(_LenientEnumMixin, StrEnum):
    """Lifecycle of a request. A str enum, so `status.state == "completed"` holds.

    PENDING: admitted, not yet dispatchable (the control plane is not started, or the
    request waits out a retry backoff). QUEUED: in the queue, waiting for an instance.
    SCHEDULED: sent to an instance, no output token yet (its prompt is being processed).
    RUNNING: the instance has sent its first token (seen when the upstream streams, the
    default). Then one of COMPLETED, FAILED, CANCELLED.
    """

    PENDING = "pending"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED)


class ParallelismType(_LenientEnumMixin, StrEnum):
    TENSOR_PARALLEL = "tp"
    PIPELINE_PARALLEL = "pp"
    DATA_PARALLEL = "dp"
    EXPERT_PARALLEL = "ep"
    HYBRID = "hybrid"


class ExecutionInstanceType(_LenientEnumMixin, StrEnum):
    """Role of a vLLM instance. `embedding` instances serve `/v1/embeddings` only."""

    GENERAL = "general"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    HYBRID = "hybrid"
    EMBEDDING = "embedding"


class RequestKind(_LenientEnumMixin, StrEnum):
    """Which OpenAI endpoint a request goes to."""

    COMPLETION = "completion"
    CHAT = "chat"
    EMBEDDING = "embedding"
