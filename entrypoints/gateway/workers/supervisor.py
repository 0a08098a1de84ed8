"""The parent process of `sage-cp serve --workers N`: it owns the listening socket, starts
the scheduling process, then N forwarding workers, hands every accepted connection to the
next live worker in turn, restarts a worker that dies, and stops the whole server loudly
when the scheduling process dies (never half-alive). SIGTERM/SIGINT: stop accepting, let
every worker drain (up to --shutdown-timeout), then stop the scheduling process; every
child is waited for, and the kernel ends them if this process is killed (child.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sage_cp_plugin.config import ControlPlaneConfig

from ..settings import GatewaySettings
from .child import SETTINGS_ENV

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 120.0  # the embedded fleet and health probes come up in the scheduler
CRASH_LOOP_S = 2.0  # a worker dying this soon after its start, 5 times in a row, is a bug
CRASH_LOOP_COUNT = 5


class ServerFailed(RuntimeError):
    """A child process failed in a way the server cannot recover from."""


@dataclass
class _Child:
    role: str
    index: int
    process: asyncio.subprocess.Process
    handoff: socket.socket  # our end of the socket pair
    started_at: float
    connections: int = 0
    quick_deaths: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, settings: GatewaySettings, config: ControlPlaneConfig, workers: int) -> None:
        if workers < 2:
            raise ValueError("the supervisor runs 2 or more workers; 1 is the plain server")
        self.settings = settings
        self.config = config
        self.n = workers
        self.run_dir = Path()  # made by run(), once the port is bound
        self.workers: list[_Child | None] = [None] * workers
        self.scheduler: _Child | None = None
        self.stopping = False
        self._next = 0
        self._worker_up = asyncio.Event()
        self._failure: str | None = None
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # watchers, kept referenced

    # -- children ---------------------------------------------------------------------------
    async def _spawn(self, role: str, index: int) -> _Child:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[SETTINGS_ENV] = self.settings.model_dump_json()
        argv = [sys.executable, "-m", "sage_cp_plugin.entrypoints.gateway.workers.child", role,
                str(self.run_dir), str(os.getpid()), str(theirs.fileno()), str(index)]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, pass_fds=(theirs.fileno(),), process_group=0
        )
        theirs.close()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        return _Child(role, index, process, ours, loop.time())

    async def _await_ready(self, child: _Child) -> bytes:
        """The child's ready line (or byte); ServerFailed if it exits first."""
        loop = asyncio.get_running_loop()
        read = asyncio.ensure_future(loop.sock_recv(child.handoff, 65536))
        exited = asyncio.ensure_future(child.process.wait())
        done, _ = await asyncio.wait(
            (read, exited), timeout=STARTUP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        exited.cancel()
        if read in done and read.result():
            data = read.result()
            if child.role == "scheduler":
                while not data.endswith(b"\n"):
                    more = await loop.sock_recv(child.handoff, 65536)
                    if not more:
                        break
                    data += more
            return data
        read.cancel()
        code = child.process.returncode
        raise ServerFailed(
            f"the {child.role} process {'exited with code ' + str(code) if code is not None else 'did not start in time'}"
            " during startup (see its messages above)"
        )

    async def _start_worker(self, index: int) -> None:
        child = await self._spawn("worker", index)
        await self._await_ready(child)
        self.workers[index] = child
        self._worker_up.set()
        self._tasks.add(asyncio.create_task(self._watch_worker(child)))

    async def _watch_worker(self, child: _Child) -> None:
        code = await child.process.wait()
        self.workers[child.index] = None
        child.handoff.close()
        if self.stopping:
            return
        loop = asyncio.get_running_loop()
        quick = loop.time() - child.started_at < CRASH_LOOP_S
        deaths = child.quick_deaths + 1 if quick else 0
        logger.error("worker %d (pid %d) exited with code %s; restarting it",
                     child.index, child.process.pid, code)  # fmt: skip
        print(f"sage-cp: worker {child.index} (pid {child.process.pid}) exited with code "
              f"{code}; restarting it", file=sys.stderr, flush=True)  # fmt: skip
        if deaths >= CRASH_LOOP_COUNT:
            self._fail(f"worker {child.index} died {deaths} times within {CRASH_LOOP_S:g}s of "
                       "starting; stopping the server")  # fmt: skip
            return
        try:
            await self._start_worker(child.index)
        except ServerFailed as exc:
            self._fail(f"worker {child.index} could not be restarted: {exc}")
            return
        restarted = self.workers[child.index]
        if restarted is not None:
            restarted.quick_deaths = deaths

    async def _watch_scheduler(self, child: _Child) -> None:
        code = await child.process.wait()
        if not self.stopping:
            self._fail(f"the scheduling process (pid {child.process.pid}) exited with code "
                       f"{code}; stopping the server")  # fmt: skip

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            print(f"sage-cp: error: {reason}", file=sys.stderr, flush=True)
        self._done.set()

    # -- connections ------------------------------------------------------------------------
    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            with conn:
                while not self._hand(conn):
                    self._worker_up.clear()
                    await self._worker_up.wait()

    def _hand(self, conn: socket.socket) -> bool:
        """Give the connection to the next live worker; False when none can take it."""
        for _ in range(self.n):
            child = self.workers[self._next]
            self._next = (self._next + 1) % self.n
            if child is None:
                continue
            try:
                socket.send_fds(child.handoff, [b"c"], [conn.fileno()])
            except OSError:  # its buffer is full or it is exiting: the next one takes it
                continue
            child.connections += 1
            return True
        return False

    # -- the whole run ----------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        s = self.settings
        listener = socket.create_server(
            (s.host, s.port), family=socket.AF_INET6 if ":" in s.host else socket.AF_INET,
            backlog=4096,
        )  # fmt: skip
        listener.setblocking(False)
        # The children learn the bound port (with --port 0 the kernel chose it): the
        # scheduling process advertises it to peer replicas (--redis-url).
        self.settings = s = s.model_copy(update={"port": listener.getsockname()[1]})
        self.run_dir = Path(tempfile.mkdtemp(prefix="sage-cp-"))  # 0700: ours alone
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._done.set)
        accepting: asyncio.Task[None] | None = None
        try:
            (self.run_dir / "config.json").write_text(self.config.model_dump_json())
            self.scheduler = await self._spawn("scheduler", self.n)
            line = await self._await_ready(self.scheduler)
            models = json.loads(line.decode().split(" ", 1)[1])
            self._tasks.add(asyncio.create_task(self._watch_scheduler(self.scheduler)))
            await asyncio.gather(*(self._start_worker(i) for i in range(self.n)))
            accepting = asyncio.create_task(self._accept(listener))
            port = listener.getsockname()[1]
            host = s.host if ":" not in s.host else f"[{s.host}]"
            print(
                f"sage-cp gateway listening on http://{host}:{port} "
                f"(models: {', '.join(models) or 'none'}); {s.auth_summary()}; "
                f"{self.n} workers",
                flush=True,
            )
            await self._done.wait()
        except ServerFailed as exc:
            self._fail(str(exc))
        finally:
            self.stopping = True
            if accepting is not None:
                accepting.cancel()
            listener.close()  # new connections are refused from now on
            await self._stop_children()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if self._failure is not None else 0

    async def _stop_children(self) -> None:
        grace = self.settings.shutdown_timeout_s + 5.0
        workers = [c for c in self.workers if c is not None]
        await asyncio.gather(*(_terminate(c, grace) for c in workers))
        if self.scheduler is not None:
            await _terminate(self.scheduler, grace)


async def _terminate(child: _Child, grace: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds; always reaped."""
    proc = child.process
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            logger.error("%s %d did not stop in %.0fs; killing it", child.role, child.index, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    with contextlib.suppress(OSError):
        child.handoff.close()


def run_supervised(settings: GatewaySettings, config: ControlPlaneConfig, workers: int) -> int:
    """Blocking entry point of `sage-cp serve --workers N` (N >= 2); the exit code."""
    return asyncio.run(Supervisor(settings, config, workers).run())
