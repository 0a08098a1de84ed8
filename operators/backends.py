"""Where the service's requests run: an in-process manager, or a remote coordinator.

Both backends live on the service's event-loop thread and turn a `PreparedRequest` into a
`ResultRecord`; admission failures become failed records, never exceptions, so a batch
always gets one record per item.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from sage_cp_plugin.config import ControlPlaneConfig, open_control_plane
from sage_cp_plugin.errors import (
    ConfigurationError,
    ModelNotServedError,
    QueueFullError,
    RequestRejectedError,
    RetryLaterError,
)
from sage_cp_plugin.manager import ControlPlaneManager

from .inputs import PreparedRequest
from .records import ResultRecord

ManagerFactory = Callable[[], AbstractAsyncContextManager[ControlPlaneManager]]

# How long a request may wait to be admitted (a full queue, a rate limit) before it fails.
ADMISSION_PATIENCE_S = 120.0


def outwaits(retry_after_s: float, now: float, deadline: float) -> bool:
    """Whether a refusal to retry later is backpressure to wait out (both backends).

    A full queue drains as requests finish and a rate limit's minute moves on, so the request
    waits, up to `ADMISSION_PATIENCE_S` in all. One that cannot be outwaited within it (a
    quota spent until its period ends) fails now, saying why, rather than after the patience.
    """
    return now + retry_after_s <= deadline


class Backend(Protocol):
    description: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, prepared: PreparedRequest) -> ResultRecord: ...

    async def metrics(self) -> dict[str, Any]: ...


class LocalBackend:
    """A `ControlPlaneManager` (and the embedded simulated fleet when no instances are set)."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        manager_factory: ManagerFactory | None = None,
        manager_options: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        # The manager keeps finished results for get_request_status (100k by default, with
        # their bodies and vectors): memory that grows with a batch file. We read every
        # result through wait(), so a small retention suffices.
        options = {"result_retention": 2048, **(manager_options or {})}
        self._factory: ManagerFactory = manager_factory or (
            lambda: open_control_plane(config, **options)
        )
        self._stack = contextlib.AsyncExitStack()
        self.manager: ControlPlaneManager | None = None
        fleet = "embedded simulated fleet" if config.uses_embedded_fleet else "configured fleet"
        self.description = f"in-process coordinator ({fleet})"

    async def start(self) -> None:
        self.manager = await self._stack.enter_async_context(self._factory())

    async def stop(self) -> None:
        self.manager = None
        await self._stack.aclose()

    async def run(self, prepared: PreparedRequest) -> ResultRecord:
        manager = self.manager
        if manager is None or not manager.running:
            return _failed(prepared, "stopped", "the control plane is not running", 503)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ADMISSION_PATIENCE_S
        while True:
            try:
                rid = await manager.submit_request(prepared.request)
                break
            except RetryLaterError as exc:
                # A full queue's retry-after is an estimate and looking again costs nothing
                # in-process: look again soon.
                wait = exc.retry_after_s
                if isinstance(exc, QueueFullError):
                    wait = min(wait, 0.05)
                if not outwaits(wait, loop.time(), deadline):
                    return _failed(prepared, exc.code, str(exc), 429)
                await asyncio.sleep(wait)
            except ModelNotServedError as exc:
                return _failed(prepared, "model_not_found", str(exc), 404)
            except RequestRejectedError as exc:
                return _failed(prepared, "rejected", str(exc), 422)
            except ConfigurationError as exc:
                return _failed(prepared, "invalid_request", str(exc), 400)
        result = await manager.wait(rid)
        return ResultRecord.from_result(
            prepared.custom_id, result, kind=prepared.kind, line=prepared.line
        )

    async def metrics(self) -> dict[str, Any]:
        if self.manager is None:
            return {}
        return self.manager.get_metrics().model_dump(mode="json")


def _failed(prepared: PreparedRequest, code: str, message: str, status: int) -> ResultRecord:
    return ResultRecord.failure(
        prepared.custom_id,
        code,
        message,
        status_code=status,
        line=prepared.line,
        request_id=prepared.request.request_id,
        kind=prepared.kind,
    )


@contextlib.asynccontextmanager
async def started_manager(manager: ControlPlaneManager) -> AsyncIterator[ControlPlaneManager]:
    """A `manager_factory` for a manager built by hand (instances registered, not started)."""
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop()
