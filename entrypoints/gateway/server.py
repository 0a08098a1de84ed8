"""Running the gateway: the control plane, then uvicorn, then an orderly shutdown.

On SIGINT/SIGTERM uvicorn stops accepting connections, lets in-flight requests finish for
up to `shutdown_timeout_s` (then cancels them, which cancels them upstream too), and only
then is the coordinator stopped and the embedded fleet, if any, shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from sage_cp_plugin.config import ControlPlaneConfig, open_control_plane
from sage_cp_plugin.manager import ControlPlaneManager

from .app import create_app
from .connections import guarded_protocol
from .gc_policy import freeze_startup_objects
from .log_limit import limit_repeated_warnings
from .runtime import Gateway
from .settings import GatewaySettings
from .shared import listening, sharing

logger = logging.getLogger(__name__)


class _Stopping(Protocol):
    shutting_down: bool  # /health answers 503 once set


class _Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, gateway: _Stopping, freeze_startup: bool = True
    ) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.freeze_startup = freeze_startup

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.freeze_startup and not self.should_exit:
            # Everything the process needs to serve exists now: keep it out of the cyclic
            # collector's scans (gc_policy.py; a full scan stalled the loop 82 ms when
            # 1,000 connections opened at once).
            freeze_startup_objects()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the captured signal after its shutdown, which would kill the
        # process before the coordinator and the embedded fleet are stopped; handle the
        # signals here instead and let `serve` return normally (exit code 0).
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # /health answers 503 from now on, so load balancers stop sending here at once.
        self.gateway.shutting_down = True
        super().handle_exit(sig, frame)


def _uvicorn_config(app: Any, settings: GatewaySettings) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # one log line per request would cost more than the routing
        # Nothing reads the client's address or scheme: uvicorn's X-Forwarded-* rewrite of
        # every request from a trusted (loopback) peer would be work for no reader.
        proxy_headers=False,
        lifespan="off",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
        timeout_keep_alive=max(1, math.ceil(settings.keep_alive_s)),
        http=guarded_protocol(settings.connection_limits()),
    )
    limit_repeated_warnings()  # after Config: it (re)configures uvicorn's loggers
    return config


def bound_port(server: uvicorn.Server, default: int) -> int:
    for s in server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    return default


@asynccontextmanager
async def serving(
    manager: ControlPlaneManager, settings: GatewaySettings | None = None
) -> AsyncIterator[tuple[str, Gateway]]:
    """Serve a gateway for a started manager inside the running event loop; yields its URL.

    For tests and embedding (the SAGE service's remote mode tests use it); signals stay with
    the process owner.
    """
    settings = settings or GatewaySettings(port=0)
    gateway = Gateway(manager, settings)
    server = _EmbeddedServer(_uvicorn_config(create_app(gateway), settings), gateway)
    async with sharing(gateway):
        async with _embedded(server, gateway, settings) as url:
            yield url, gateway


@asynccontextmanager
async def _embedded(
    server: _EmbeddedServer, gateway: Gateway, settings: GatewaySettings
) -> AsyncIterator[str]:
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise a bind error
                raise RuntimeError("the gateway stopped during startup")
            await asyncio.sleep(0.005)
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        port = bound_port(server, settings.port)
        listening(gateway, port)
        yield f"http://{host}:{port}"
    finally:
        gateway.shutting_down = True
        server.should_exit = True
        await task
        await gateway.aclose()


class _EmbeddedServer(_Server):
    def __init__(self, config: uvicorn.Config, gateway: _Stopping) -> None:
        # Embedded in someone else's process (tests, the SAGE service, the scheduling
        # process of `--workers`): its garbage collection is the owner's to decide.
        super().__init__(config, gateway, freeze_startup=False)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # embedded: the process owner handles signals


def manager_overrides(settings: GatewaySettings) -> dict[str, Any]:
    """The coordinator options the gateway's flags set (also the scheduling process's of
    `--workers N`, workers/scheduler.py)."""
    overrides: dict[str, Any] = {
        "result_retention": settings.result_retention,
        "result_retention_bytes": settings.result_retention_bytes,
        "upstream_streaming": settings.upstream_streaming,
    }
    if settings.max_pending_requests is not None:
        overrides["max_pending_requests"] = settings.max_pending_requests
    return overrides


async def serve(
    settings: GatewaySettings,
    config: ControlPlaneConfig | str | Path | None = None,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    cfg = ControlPlaneConfig.load(config)
    async with open_control_plane(cfg, **manager_overrides(settings)) as manager:
        gateway = Gateway(manager, settings)
        app = create_app(gateway)
        server = _Server(_uvicorn_config(app, settings), gateway, freeze_startup=settings.gc_freeze)
        watcher = asyncio.create_task(
            _announce(server, gateway, settings, manager.list_models(), ready)
        )
        try:
            async with sharing(gateway):
                await server.serve()
        finally:
            watcher.cancel()
            await gateway.aclose()


async def _announce(
    server: uvicorn.Server,
    gateway: Gateway,
    settings: GatewaySettings,
    model_names: list[str],
    ready: asyncio.Event | None,
) -> None:
    while not server.started:  # noqa: ASYNC110  (uvicorn exposes only a flag; startup only)
        await asyncio.sleep(0.01)
    port = bound_port(server, settings.port)
    listening(gateway, port)
    print(
        f"sage-cp gateway listening on http://{settings.host}:{port} "
        f"(models: {', '.join(model_names) or 'none'}); {settings.auth_summary()}",
        flush=True,
    )
    if ready is not None:
        ready.set()


def run(settings: GatewaySettings, config: ControlPlaneConfig | str | Path | None) -> None:
    """Blocking entry point; uses uvloop when it is installed (measurably lower overhead)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings, config))
        return
    uvloop.run(serve(settings, config))
