"""`ControlPlaneService`: the one coordinator every operator of a SAGE job shares.

SAGE creates a service once per job and calls it by reference from its worker threads
(docs/architecture.md §7), never awaiting `async def` methods. So the service owns an event loop on a
dedicated daemon thread, its public methods are synchronous and thread-safe, and they hand
work to that loop with `asyncio.run_coroutine_threadsafe`. One call may carry a whole batch:
its requests run concurrently on the loop, which is where concurrency towards vLLM comes
from. The thread is a daemon because SAGE skips `stop()` when an operator raises; then
`use_control_plane` (or the job runner's `finally`) closes the service instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from sage.runtime import BaseService

from sage_cp_plugin.config import ControlPlaneConfig
from sage_cp_plugin.tracing import batch as tracing_batch
from sage_cp_plugin.types import RequestKind

from .backends import Backend, LocalBackend, ManagerFactory
from .inputs import PreparedRequest, prepare
from .outage import OutageBackoff
from .records import ResultRecord
from .remote import RemoteBackend

T = TypeVar("T")
ConfigSource = ControlPlaneConfig | dict[str, Any] | str | Path | None

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
# Every live service, so a job runner can close the ones its job created (by `job_token`).
_LIVE: weakref.WeakSet[ControlPlaneService] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class ServiceClosedError(RuntimeError):
    """The service was closed; no more requests are accepted."""


class ControlPlaneService(BaseService):  # type: ignore[misc]
    """Runs a `ControlPlaneManager` (or talks to `sage-cp serve` at `url`) for SAGE operators.

    `config`: a `ControlPlaneConfig`, a dict, or a YAML/TOML path (None: the embedded
    simulated fleet). `url`: a remote coordinator instead of an in-process one.
    `manager_factory`: an async context manager factory yielding a started manager (tests,
    hand-built fleets). `backend`: any object with the `Backend` methods (tests).
    `manager_options`: extra `ControlPlaneManager` arguments, e.g. `upstream_streaming=False`. Usable without SAGE too: `with ControlPlaneService() as svc: ...`.
    """

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        url: str | None = None,
        manager_factory: ManagerFactory | None = None,
        backend: Backend | None = None,
        manager_options: dict[str, Any] | None = None,
        job_token: str | None = None,
        outage: OutageBackoff | None = None,
        trace_parent: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A batch job's span (W3C carrier): its requests become its children when traced.
        self.trace_parent = trace_parent
        # When given, requests failing as a down fleet fails are retried with backoff.
        self.outage = outage
        if url is not None and (config is not None or manager_factory is not None):
            raise ValueError("give either url= (a remote coordinator) or a config, not both")
        self._custom_backend = backend
        self._manager_options = manager_options
        # Load now: an unreadable config fails at construction with one clear message.
        self.config = ControlPlaneConfig.load(config) if url is None else None
        self.url = url
        self.job_token = job_token
        self._manager_factory = manager_factory
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._backend: Backend | None = None
        self._closed = False
        self._shared: dict[str, Any] = {}
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._loop is not None and not self._closed

    @property
    def description(self) -> str:
        return self._backend.description if self._backend is not None else "not started"

    def setup(self) -> None:
        """SAGE hook (called after construction); the loop starts lazily on first use."""

    def start(self) -> None:
        self._ensure_started()

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and not self._closed:
            return loop
        with self._lock:
            if self._closed:
                raise ServiceClosedError("the control-plane service is closed")
            if self._loop is not None:
                return self._loop
            backend: Backend
            if self._custom_backend is not None:
                backend = self._custom_backend
            elif self.url is not None:
                backend = RemoteBackend(self.url)
            else:
                assert self.config is not None
                backend = LocalBackend(self.config, self._manager_factory, self._manager_options)
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_loop, args=(loop,), name="sage-cp-service", daemon=True
            )
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(backend.start(), loop).result(_START_TIMEOUT_S)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_STOP_TIMEOUT_S)
                loop.close()
                raise
            self._backend, self._thread, self._loop = backend, thread, loop
            return loop

    def close(self) -> None:
        """Stop the coordinator and its thread. Idempotent; safe from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, backend = self._loop, self._thread, self._backend
        if loop is None or thread is None or backend is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(backend.stop(), loop).result(_STOP_TIMEOUT_S)
        except Exception:  # still stop the loop: a failing shutdown must not leak the thread
            self.logger.exception("control-plane service did not stop cleanly")
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()

    # SAGE calls stop() then cleanup() after a successful autostop run.
    def stop(self) -> None:
        self.close()

    def cleanup(self) -> None:
        self.close()

    def __enter__(self) -> ControlPlaneService:
        self._ensure_started()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------
    def submit(
        self,
        item: Any,
        *,
        kind: RequestKind | str | None = None,
        model: str | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> concurrent.futures.Future[ResultRecord]:
        """Start one request; the future resolves to its `ResultRecord` (never raises)."""
        prepared = prepare(item, kind=_kind(kind), model=model, defaults=defaults)
        if isinstance(prepared, ResultRecord):
            done: concurrent.futures.Future[ResultRecord] = concurrent.futures.Future()
            done.set_result(prepared)
            return done
        inner = self._on_loop(self._run_one(prepared))
        outer: concurrent.futures.Future[ResultRecord] = concurrent.futures.Future()
        inner.add_done_callback(lambda f: outer.set_result(_settled(f, prepared)))
        return outer

    def run(self, item: Any, **options: Any) -> ResultRecord:
        """One request, waited for."""
        return self.submit(item, **options).result()

    def run_batch(self, items: Iterable[Any], **options: Any) -> list[ResultRecord]:
        """Many requests run concurrently; the records come back in input order."""
        kind = _kind(options.pop("kind", None))
        prepared = [prepare(i, kind=kind, **options) for i in items]
        return self._on_loop(self._run_many(prepared)).result()

    # SAGE's `call_service(name, item)` looks for a method named process/execute/call.
    def process(self, item: Any, **options: Any) -> ResultRecord:
        return self.run(item, **options)

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        """Job-wide state for operators, created once per key (the replicas of one operator
        find each other here: SAGE gives them no other shared object)."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = factory()
            value: T = self._shared[key]
            return value

    def metrics(self) -> dict[str, Any]:
        """The coordinator's metrics (PerformanceMetrics fields, or the remote's samples)."""
        if self._backend is None or self._closed:
            return {}
        return self._on_loop(self._backend.metrics()).result(_STOP_TIMEOUT_S)

    async def _run_one(self, prepared: PreparedRequest) -> ResultRecord:
        if self.trace_parent is not None:
            with tracing_batch.parent(self.trace_parent):
                return await self._run_one_untraced(prepared)
        return await self._run_one_untraced(prepared)

    async def _run_one_untraced(self, prepared: PreparedRequest) -> ResultRecord:
        if self.outage is None:
            return await self._run_once(prepared)
        rid = prepared.request.request_id

        async def attempt(n: int) -> ResultRecord:
            if n == 0:
                return await self._run_once(prepared)
            fresh = prepared.request.model_copy(update={"request_id": f"{rid}-retry{n}"})
            return await self._run_once(dataclasses.replace(prepared, request=fresh))

        return await self.outage.run(attempt)

    async def _run_once(self, prepared: PreparedRequest) -> ResultRecord:
        assert self._backend is not None
        try:
            return await self._backend.run(prepared)
        except Exception as exc:  # one record per item, whatever happens
            self.logger.exception("request %s crashed", prepared.custom_id)
            return ResultRecord.failure(
                prepared.custom_id,
                "internal_error",
                f"{type(exc).__name__}: {exc}",
                status_code=500,
                line=prepared.line,
                kind=prepared.kind,
            )

    async def _run_many(self, items: list[PreparedRequest | ResultRecord]) -> list[ResultRecord]:
        async def one(item: PreparedRequest | ResultRecord) -> ResultRecord:
            return item if isinstance(item, ResultRecord) else await self._run_one(item)

        attrs = {"sage_cp.batch.size": len(items)}
        with (
            tracing_batch.parent(self.trace_parent),
            tracing_batch.span("sage_cp.pipeline_batch", attrs),
        ):
            return list(await asyncio.gather(*(one(i) for i in items)))

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            loop = self._ensure_started()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)


def close_services(job_token: str) -> int:
    """Close every live service created for `job_token`; returns how many were open."""
    with _LIVE_LOCK:
        mine = [s for s in _LIVE if s.job_token == job_token]
    for service in mine:
        service.close()
    return len(mine)


def _settled(
    future: concurrent.futures.Future[ResultRecord], prepared: PreparedRequest
) -> ResultRecord:
    """The record of a finished future; a request cut off by `close()` still gets one."""
    if not future.cancelled() and future.exception() is None:
        return future.result()
    why = "cancelled" if future.cancelled() else repr(future.exception())
    return ResultRecord.failure(
        prepared.custom_id,
        "cancelled",
        f"the control-plane service closed before the request finished ({why})",
        status_code=499,
        line=prepared.line,
        request_id=prepared.request.request_id,
        kind=prepared.kind,
    )


def _kind(kind: RequestKind | str | None) -> RequestKind | None:
    return None if kind is None else RequestKind(kind)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Cancel whatever is left so no task outlives the service.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
