"""`use_control_plane(env, ...)`: register the shared service and shield the job from SAGE bugs.

What it does to the environment, and why (docs/architecture.md §7, SAGE 0.3.2.4):
- registers `ControlPlaneService` under `name`;
- adds an empty batch source, because a linear `from_batch -> map -> sink` job otherwise takes
  SAGE's fast path, whose context has no service access, which loads the whole source into
  memory and runs stages on an 8-thread pool; with two sources the job runs on the general
  path: items stream one at a time, in order, and operators reach the service directly;
- wraps `env.submit`/`env.stop`/`env.close` so the service is closed when the job ends,
  also when an operator raised (SAGE then never calls the service's stop hooks).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .backends import Backend, ManagerFactory
from .outage import OutageBackoff
from .service import ConfigSource, ControlPlaneService, close_services

DEFAULT_SERVICE_NAME = "control_plane"


@dataclass(frozen=True)
class ControlPlaneHandle:
    """What `use_control_plane` returns: the service name and a way to close it early."""

    name: str
    job_token: str

    def close(self) -> int:
        return close_services(self.job_token)


def use_control_plane(
    env: Any,
    config: ConfigSource = None,
    *,
    url: str | None = None,
    name: str = DEFAULT_SERVICE_NAME,
    manager_factory: ManagerFactory | None = None,
    backend: Backend | None = None,
    manager_options: dict[str, Any] | None = None,
    outage: OutageBackoff | None = None,
    trace_parent: dict[str, str] | None = None,
) -> ControlPlaneHandle:
    """Register the control-plane service on a SAGE environment (see the module doc)."""
    token = uuid.uuid4().hex
    kwargs: dict[str, Any] = {"job_token": token}
    if outage is not None:
        kwargs["outage"] = outage
    if trace_parent is not None:  # a traced batch job: its requests are the job's children
        kwargs["trace_parent"] = trace_parent
    if url is not None:
        kwargs["url"] = url
    else:
        kwargs["config"] = config
        if manager_factory is not None:
            kwargs["manager_factory"] = manager_factory
        if backend is not None:
            kwargs["backend"] = backend
        if manager_options:
            kwargs["manager_options"] = manager_options
    # Fail now, not inside the job, on an unreadable config or a conflicting pair.
    ControlPlaneService(**kwargs).close()
    env.register_service(name, ControlPlaneService, **kwargs)
    env.from_batch([])
    _close_with_job(env, token)
    return ControlPlaneHandle(name, token)


def _close_with_job(env: Any, token: str) -> None:
    submit, stop, close = env.submit, getattr(env, "stop", None), getattr(env, "close", None)

    def submit_and_close(*args: Any, **kwargs: Any) -> Any:
        autostop = bool(kwargs.get("autostop", args[0] if args else False))
        try:
            result = submit(*args, **kwargs)
        except BaseException:
            close_services(token)
            raise
        if autostop:
            close_services(token)
        return result

    env.submit = submit_and_close
    for original, attr in ((stop, "stop"), (close, "close")):
        if original is not None:
            setattr(env, attr, _then_close(original, token))


def _then_close(original: Any, token: str) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            close_services(token)

    return wrapped
