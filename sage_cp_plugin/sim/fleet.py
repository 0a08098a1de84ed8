"""Fleets of simulated instances served over real loopback sockets.

``SimFleet`` runs N uvicorn servers inside the caller's event loop (async tests, the CLI);
``SimFleetThread`` runs one in a daemon thread with its own loop for synchronous callers (the
batch job, the SAGE service). ``kill`` is a crash -- the listening socket closes and open
connections are reset at once -- and ``restart`` brings a fresh engine back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette

from sage_cp_plugin.sim.app import SimInstance, create_app, instance_of
from sage_cp_plugin.sim.config import SimInstanceConfig
from sage_cp_plugin.sim.streaming import SimulatedDisconnect

T = TypeVar("T")

# Demos run at real H100 speed: a 128-token answer alone takes ~0.75 s, a batch of a few
# hundred requests a few seconds. Tests pass their own (smaller) time_scale.
DEFAULT_FLEET_TIME_SCALE = 1.0


def embedded_default_fleet(time_scale: float = DEFAULT_FLEET_TIME_SCALE) -> list[SimInstanceConfig]:
    """The fleet used wherever no configuration is given.

    Two general instances serving ``sim-model`` (Llama-3.1-8B on one H100) and one embedding
    instance serving ``sim-embed``, whose coefficients are those of a small encoder
    (MiniLM-sized: ~2 ms per step, ~1 us per token) rather than of an 8B decoder.
    """
    general = [
        SimInstanceConfig(
            served_model_names=["sim-model"], role="general", time_scale=time_scale, seed=i
        )
        for i in range(2)
    ]
    embed = SimInstanceConfig(
        served_model_names=["sim-embed"],
        role="embedding",
        time_scale=time_scale,
        b0_ms=2.0,
        b1_us_per_token=1.0,
        b2_us_per_seq=0.0,
        seed=2,
    )
    return [*general, embed]


class _QuietSimulatedDisconnect(logging.Filter):
    """uvicorn logs a traceback for the exception that drops a connection on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedDisconnect)


_QUIET = _QuietSimulatedDisconnect()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Many servers share one process: signals belong to whoever owns the process (the CLI).
        yield


@dataclass
class SimFleetMember:
    """One instance of a fleet: where it listens and what it runs."""

    index: int
    config: SimInstanceConfig
    host: str
    port: int
    app: Starlette | None = None
    alive: bool = False
    _server: _Server | None = field(default=None, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def sim(self) -> SimInstance:
        """Engine, faults and state of the running instance."""
        if self.app is None:
            raise RuntimeError(f"instance {self.index} ({self.url}) is not running")
        return instance_of(self.app)


class SimFleet:
    """N simulated vLLM servers on ``host``; ports from ``port`` upwards, or free ones if 0."""

    def __init__(
        self,
        configs: Sequence[SimInstanceConfig] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        configs = list(configs) if configs is not None else embedded_default_fleet()
        self.members = [
            SimFleetMember(i, c, host, port + i if port else 0) for i, c in enumerate(configs)
        ]
        self._started = False

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> SimFleetMember:
        return self.members[i]

    async def start(self) -> list[str]:
        if self._started:
            return self.urls
        logging.getLogger("uvicorn.error").addFilter(_QUIET)
        try:
            for m in self.members:
                await self._start_member(m)
        except BaseException:
            await self.stop()
            raise
        self._started = True
        return self.urls

    async def stop(self) -> None:
        """Stop every instance; no task of the fleet survives this call."""
        for m in self.members:
            await self._stop_member(m)
        self._started = False

    async def kill(self, i: int) -> None:
        """Crash instance ``i``: connections reset, new ones refused, requests lost."""
        await self._stop_member(self.members[i])

    async def restart(self, i: int) -> None:
        """Start instance ``i`` again on the same port with a fresh engine."""
        m = self.members[i]
        await self._stop_member(m)
        await self._start_member(m)

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    async def _start_member(self, m: SimFleetMember) -> None:
        # proto must be IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted
        # sockets whose proto says TCP, and without it every POST (headers and body arrive in
        # two segments) stalls ~40 ms on Nagle + delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A restart rebinds the port while old connections may sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((m.host, m.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind simulated instance to {m.url}: {exc}") from None
        m.port = sock.getsockname()[1]
        m.app = create_app(m.config)
        config = uvicorn.Config(
            m.app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30
        )
        m._server = server = _Server(config)
        m._task = task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[sock]), name=f"sim-server-{m.port}"
        )
        # uvicorn offers no "started" event; startup takes a few loop iterations.
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise RuntimeError(f"simulated instance {m.url} failed to start")
            await asyncio.sleep(0.001)
        m.alive = True

    async def _stop_member(self, m: SimFleetMember) -> None:
        server, task = m._server, m._task
        m.alive = False
        if server is None or task is None:
            return
        server.should_exit = server.force_exit = True
        for listener in getattr(server, "servers", []):
            listener.close()  # refuse new connections now, not at uvicorn's next tick
        for conn in list(server.server_state.connections):
            transport: Any = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()  # reset, as a crashed process would
        if m.app is not None:
            await instance_of(m.app).aclose()  # ends streams, waits and hangs
        for _ in range(3):
            await asyncio.sleep(0)  # let the released handlers return
        for t in list(server.server_state.tasks):
            t.cancel()  # whatever is still stuck
        with contextlib.suppress(asyncio.CancelledError):
            await task
        m._server = m._task = None
        m.app = None


class SimFleetThread:
    """A ``SimFleet`` on its own event loop in a daemon thread, for synchronous code.

    The thread is a daemon so an interpreter exit never hangs on it (SAGE may skip cleanup).
    """

    def __init__(
        self,
        configs: Sequence[SimInstanceConfig] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.fleet = SimFleet(configs, host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def urls(self) -> list[str]:
        return self.fleet.urls

    def start(self, timeout: float = 30.0) -> list[str]:
        if self._thread is not None:
            return self.urls
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop,), daemon=True)
        self._thread.name = "sage-cp-sim-fleet"
        self._thread.start()
        try:
            return self._call(self.fleet.start(), timeout)
        except BaseException:
            self.stop(timeout)
            raise

    def stop(self, timeout: float = 30.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self.fleet.stop(), timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._loop = self._thread = None

    def kill(self, i: int, timeout: float = 30.0) -> None:
        self._call(self.fleet.kill(i), timeout)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        self._call(self.fleet.restart(i), timeout)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the simulated fleet is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def __enter__(self) -> SimFleetThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
