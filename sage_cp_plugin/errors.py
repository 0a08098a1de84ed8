"""Exceptions of the control plane. Each message says what was wrong and what would work."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(ControlPlaneError, ValueError):
    """A configuration (policy/router names, instances, files) cannot be used as given."""


class RequestIdInUseError(ConfigurationError):
    """A request was submitted with the id of one the coordinator still knows (in flight,
    or its result retained)."""


class UnknownPluginError(ConfigurationError, KeyError):
    """A policy, router or parallelism strategy name that no plugin registered."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, available
        super().__init__(
            f"unknown {kind} {name!r}; available: {', '.join(sorted(available)) or 'none'}"
        )

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class PluginConflictError(ConfigurationError):
    """Two plugins registered the same name."""


class DuplicateInstanceError(ConfigurationError):
    """An instance id that is already registered."""


class AdmissionError(ControlPlaneError):
    """The request was not admitted (queue full, shutting down, rejected by policy)."""

    status_code = 503


class RetryLaterError(AdmissionError):
    """Not admitted now, admissible after `retry_after_s` (HTTP 429 with Retry-After;
    `code` says why: a full queue, a rate limit, a spent quota)."""

    status_code = 429
    code = "retry_later"
    retry_after_s: float


class QueueFullError(RetryLaterError):
    code = "queue_full"

    def __init__(self, capacity: int, retry_after_s: float = 1.0) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        super().__init__(
            f"pending queue is full ({capacity} requests waiting); retry after "
            f"{retry_after_s:.1f}s or raise max_pending_requests"
        )


class NoInstanceError(ControlPlaneError):
    """No healthy instance can serve the request (model unknown, all down, wrong role)."""

    status_code = 503


class ModelNotServedError(NoInstanceError):
    status_code = 404

    def __init__(self, model: str | None, served: list[str]) -> None:
        self.model, self.served = model, served
        super().__init__(
            f"no instance serves model {model!r}; models served by this fleet: "
            f"{', '.join(sorted(served)) or 'none'}"
        )


class RequestRejectedError(ControlPlaneError):
    """A policy rejected the request (deadline already missed, budget too small)."""

    status_code = 422


class UpstreamError(ControlPlaneError):
    """An instance answered with an error or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        instance_id: str | None = None,
        retryable: bool = True,
        retry_after_s: float | None = None,
        body_started: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.instance_id = instance_id
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.body_started = body_started

    @property
    def is_client_error(self) -> bool:
        """The instance rejected the request itself (4xx other than 408/429): the request
        is at fault, not the instance, so it neither retries nor counts against health."""
        code = self.status_code
        return code is not None and 400 <= code < 500 and code not in (408, 429)


class InvalidRequestBodyError(ControlPlaneError):
    """The request itself cannot be sent to an instance (a field of the wrong shape, text
    that is not valid Unicode, NaN, nesting too deep). The request is at fault: it is not
    retried and never counts against an instance's health."""

    status_code = 400


class RequestTimeoutError(ControlPlaneError, TimeoutError):
    """A request did not finish in time: `wait(..., timeout=)` ran out, or the request
    outlived `request_timeout_s` (its result then has error_type "timeout")."""

    status_code = 504
