"""A forwarding worker process: uvicorn serving the connections the supervisor hands it.

The supervisor accepts every connection on the one listening socket and passes each to a
worker over a Unix socket pair (SCM_RIGHTS), in turn: the spread over workers is exact by
connections, where one shared accept socket leaves it to whichever worker wakes first
(granian #544, envoy #4602) and SO_REUSEPORT to a hash of the client's port (lumpy for
few long-lived keep-alive connections; connections queued on a dead worker's socket are
reset, granian #567). uvicorn's own protocol serves each handed connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from sage_cp_plugin import tracing
from sage_cp_plugin.tracing.asgi import TracingMiddleware

from ..server import _Server, _uvicorn_config
from ..settings import GatewaySettings
from .link import SchedulerLink
from .wire import Channel
from .worker_app import FORWARDED, WorkerApp

logger = logging.getLogger(__name__)
_FDS_PER_READ = 64


class _HandedConnectionsServer(_Server):
    """uvicorn without a listening socket of its own: connections come from `handoff`."""

    def __init__(
        self, config: Any, app: WorkerApp, handoff: socket.socket, freeze_startup: bool = True
    ) -> None:
        super().__init__(config, app, freeze_startup)
        self.handoff = handoff
        self.connections_taken = 0
        self._handing: set[asyncio.Task[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # no listener: `self.servers` stays empty
        loop = asyncio.get_running_loop()
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state,
                app_state=self.lifespan.state, _loop=loop,
            )  # fmt: skip

        def take() -> None:
            try:
                _, fds, _, _ = socket.recv_fds(self.handoff, 16, _FDS_PER_READ)
            except BlockingIOError:
                return
            except OSError:
                fds = []
            if not fds:  # the supervisor closed its end: it is gone
                loop.remove_reader(self.handoff.fileno())
                self.should_exit = True
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if self.should_exit:
                    sock.close()
                    continue
                sock.setblocking(False)
                self.connections_taken += 1
                task = loop.create_task(loop.connect_accepted_socket(protocol, sock))
                self._handing.add(task)
                task.add_done_callback(self._handing.discard)

        self.handoff.setblocking(False)
        loop.add_reader(self.handoff.fileno(), take)
        self.handoff.send(b"r")  # ready: the supervisor may hand connections now

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.handoff.fileno())


async def serve_worker(
    index: int, settings: GatewaySettings, handoff: socket.socket, control_path: str,
    http_path: str,
) -> None:  # fmt: skip
    reader, writer = await asyncio.open_unix_connection(control_path)
    link = SchedulerLink(Channel(reader, writer), upstream_streaming=settings.upstream_streaming)
    link.channel.send(("hello", index, os.getpid()))
    app = WorkerApp(index, link, settings, http_path)
    # Traced: a SERVER span for each request this worker serves itself; the routes it
    # proxies whole get theirs in the scheduling process's app (one per request).
    asgi: Any = TracingMiddleware(app, only=FORWARDED) if tracing.enabled() else app
    server = _HandedConnectionsServer(
        _uvicorn_config(asgi, settings), app, handoff, freeze_startup=settings.gc_freeze
    )
    listening = asyncio.create_task(link.listen())

    def scheduler_gone(_: asyncio.Task[None]) -> None:
        if not server.should_exit:
            logger.error("worker %d: the scheduling process is gone; exiting", index)
            server.should_exit = True

    listening.add_done_callback(scheduler_gone)
    try:
        # Serve only once the scheduler said whether request ids are claimed across replicas:
        # a request taken before would run here even if a peer replica owns its id.
        await link.welcome
        await server.serve()
    finally:
        await app.aclose()
        await link.aclose()
        listening.cancel()
        handoff.close()
