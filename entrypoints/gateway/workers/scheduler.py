"""The scheduling process of `sage-cp serve --workers N`: the one control plane.

It runs the ordinary coordinator (with `ForwardingExecutor`) and the ordinary gateway app,
the latter on a Unix socket that only the workers reach: every route that is not a
generation request (admin, /health, /metrics, /v1/models, embeddings, experiments) is
proxied here whole by the workers, so admin changes land once and /health and /metrics
show the whole control plane. The workers' generation requests arrive on a second Unix
socket as messages (`forwarding.WorkerSession`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from sage_cp_plugin.config import ControlPlaneConfig, open_control_plane

from ..app import create_app
from ..runtime import Gateway
from ..server import _EmbeddedServer, manager_overrides
from ..settings import GatewaySettings
from ..shared import listening, sharing
from .forwarding import ForwardingExecutor, WorkerSession
from .wire import Channel

logger = logging.getLogger(__name__)


class WorkerPool:
    """The workers connected to this scheduling process, for /health and /metrics."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.sessions: dict[int, WorkerSession] = {}
        self.starts: dict[int, int] = {}
        self._answered_before: dict[int, int] = {}  # by workers of that index now gone

    def joined(self, session: WorkerSession) -> None:
        self.starts[session.index] = self.starts.get(session.index, 0) + 1
        self.sessions[session.index] = session

    def left(self, session: WorkerSession) -> None:
        if self.sessions.get(session.index) is session:
            del self.sessions[session.index]
        i = session.index
        self._answered_before[i] = self._answered_before.get(i, 0) + session.requests_answered

    def answered(self) -> dict[int, int]:
        out = dict(self._answered_before)
        for i, s in self.sessions.items():
            out[i] = out.get(i, 0) + s.requests_answered
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "workers": self.expected,
            "alive": len(self.sessions),
            "restarts": sum(n - 1 for n in self.starts.values()),
            "requests_by_worker": {str(i): n for i, n in sorted(self.answered().items())},
        }

    def prometheus(self) -> bytes:
        lines = [
            "# HELP sage_cp_workers forwarding worker processes configured (--workers)",
            "# TYPE sage_cp_workers gauge",
            f"sage_cp_workers {self.expected}",
            "# HELP sage_cp_workers_alive forwarding workers connected to the scheduler",
            "# TYPE sage_cp_workers_alive gauge",
            f"sage_cp_workers_alive {len(self.sessions)}",
            "# HELP sage_cp_worker_restarts_total workers restarted after they died",
            "# TYPE sage_cp_worker_restarts_total counter",
            f"sage_cp_worker_restarts_total {sum(n - 1 for n in self.starts.values())}",
            "# HELP sage_cp_worker_requests_total generation requests answered, by worker "
            "(the spread of connections over the workers)",
            "# TYPE sage_cp_worker_requests_total counter",
        ]
        lines += [
            f'sage_cp_worker_requests_total{{worker="{i}"}} {n}'
            for i, n in sorted(self.answered().items())
        ]
        return ("\n".join(lines) + "\n").encode()


async def serve_scheduler(
    settings: GatewaySettings,
    config_path: Path,
    control_path: Path,
    http_path: Path,
    workers: int,
    ready: Callable[[list[str]], None],
) -> None:
    """Run until SIGTERM/SIGINT (sent by the supervisor once every worker has drained)."""
    cfg = ControlPlaneConfig.load(config_path)
    executor = ForwardingExecutor(upstream_streaming=settings.upstream_streaming)
    async with open_control_plane(cfg, executor=executor, **manager_overrides(settings)) as manager:
        gateway = Gateway(manager, settings)
        pool = WorkerPool(workers)
        gateway.workers = pool
        sessions: set[asyncio.Task[None]] = set()

        async def on_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = WorkerSession(Channel(reader, writer), gateway, executor)
            task = asyncio.current_task()
            assert task is not None
            sessions.add(task)
            try:
                await session.serve(pool.joined)
            finally:
                pool.left(session)
                sessions.discard(task)
                writer.close()

        control = await asyncio.start_unix_server(on_worker, path=str(control_path))
        config = uvicorn.Config(
            create_app(gateway),
            uds=str(http_path),
            log_level=settings.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
            timeout_keep_alive=max(1, math.ceil(settings.keep_alive_s)),
        )
        server = _EmbeddedServer(config, gateway)  # signals are handled here, not by uvicorn
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with sharing(gateway):
                # Peers hand requests whose id this replica claimed to the port the
                # supervisor listens on (the workers serve it; settings carry it bound).
                listening(gateway, settings.port)
                http = asyncio.create_task(server.serve())
                while not server.started:
                    if http.done():
                        http.result()
                        raise RuntimeError("the scheduler's HTTP server stopped during startup")
                    await asyncio.sleep(0.005)
                ready(manager.list_models())
                await stop.wait()
                gateway.shutting_down = True
                control.close()
                for task in list(sessions):
                    task.cancel()
                server.should_exit = True
                await http
        finally:
            with contextlib.suppress(Exception):
                control.close()
            await gateway.aclose()
