"""The ``local`` actuator: server processes on this machine, started and stopped from a
command template, e.g. ``["sage-cp", "sim", "--port", "{port}", "--model", "{model}",
"--role", "{role}"]`` or ``vllm serve ... --port {port}``.

It is also a discovery source: it publishes the processes it keeps, so a new one enters
routing only once its ``/v1/models`` answers (its real cold start), and one it retires is
first removed from its view -- the reconciler drains it -- and terminated only after the
coordinator has unregistered it, i.e. once its last request ended. No request is lost to a
scale-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shlex
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from sage_cp_plugin.elastic.autoscaler import Decision, Role
from sage_cp_plugin.elastic.discovery import Publish
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.state import FleetSnapshot
from sage_cp_plugin.types import ExecutionInstance, ExecutionInstanceType

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalProcess:
    instance_id: str
    role: Role
    port: int
    process: asyncio.subprocess.Process
    retiring: bool = False


class LocalProcessActuator:
    name = "local"

    def __init__(
        self,
        command: list[str] | str,
        *,
        host: str = "127.0.0.1",
        max_concurrent_requests: int = 64,
        interval_s: float = 0.5,
        stop_timeout_s: float = 20.0,
        log_dir: str | None = None,
    ) -> None:
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.command or not any("{port}" in c for c in self.command):
            raise ConfigurationError(
                f"local actuator: the command template must contain {{port}}, got {command!r}"
            )
        self.host = host
        self.max_concurrent_requests = max_concurrent_requests
        self.interval_s = interval_s
        self.stop_timeout_s = stop_timeout_s
        # Each process's stdout and stderr go to <log_dir>/<instance id>.log (appended), so a
        # server that fails to start can be diagnosed; without it they are discarded.
        self.log_dir = Path(log_dir) if log_dir else None
        self.processes: dict[str, LocalProcess] = {}
        self.model = ""
        self.fleet: FleetSnapshot | None = None
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    def bind(self, fleet: FleetSnapshot) -> None:
        self.fleet = fleet

    # -- actuator ----------------------------------------------------------------------------
    def target(self, model: str) -> dict[Role, int] | None:
        out: dict[Role, int] = {}
        for p in self.processes.values():
            if not p.retiring:
                out[p.role] = out.get(p.role, 0) + 1
        return out

    async def apply(self, model: str, decision: Decision, decision_id: str) -> None:
        self.model = model or self.model
        for role, n in decision.desired.items():
            live = [p for p in self.processes.values() if p.role == role and not p.retiring]
            for _ in range(n - len(live)):
                await self._start(role)
            if n < len(live):
                for p in sorted(live, key=self._load)[: len(live) - n]:
                    p.retiring = True
                    logger.info("local actuator: retiring %s (%s)", p.instance_id, decision_id)
        self._changed.set()

    def _load(self, p: LocalProcess) -> tuple[int, int]:
        state = self.fleet.states.get(p.instance_id) if self.fleet else None
        # Cold ones first (nothing to drain), then the least busy.
        return (0, 0) if state is None else (1, state.in_flight)

    async def _start(self, role: Role) -> None:
        port = free_port(self.host)
        iid = f"local-{role}-{next(self._ids)}"
        args = [c.format(port=port, model=self.model or "sim-model", role=role, host=self.host)
                for c in self.command]  # fmt: skip
        if self.log_dir is None:
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.log_dir / f"{iid}.log").open("ab") as log:  # the child keeps its own fd
                proc = await asyncio.create_subprocess_exec(
                    *args, stdout=log, stderr=asyncio.subprocess.STDOUT
                )
        self.processes[iid] = LocalProcess(iid, role, port, proc)
        logger.info("local actuator: started %s (pid %d): %s", iid, proc.pid, shlex.join(args))

    # -- discovery source ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, ExecutionInstance]:
        return {
            p.instance_id: ExecutionInstance(
                instance_id=p.instance_id,
                host=self.host,
                port=p.port,
                instance_type=ExecutionInstanceType(p.role),
                max_concurrent_requests=self.max_concurrent_requests,
                metadata={"discovered_by": self.name, "pid": p.process.pid},
            )
            for p in self.processes.values()
            if not p.retiring and p.process.returncode is None
        }

    async def run(self, publish: Publish) -> None:
        try:
            while True:
                await publish(self.snapshot())
                await self._reap()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the event is set (the loop would never stop).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._changed.wait()
                self._changed.clear()
        finally:
            await self.aclose()

    async def _reap(self) -> None:
        """Terminate retired processes the coordinator no longer knows (drained, idle)."""
        states = self.fleet.states if self.fleet else {}
        for iid, p in list(self.processes.items()):
            if p.process.returncode is not None and not p.retiring:
                logger.warning("local actuator: %s exited (%s)", iid, p.process.returncode)
                del self.processes[iid]
            elif p.retiring and iid not in states:
                await self._stop(p)
                del self.processes[iid]

    async def _stop(self, p: LocalProcess) -> None:
        if p.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.process.wait(), self.stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.process.kill()
                await p.process.wait()

    async def aclose(self) -> None:
        procs, self.processes = list(self.processes.values()), {}
        for p in procs:
            await self._stop(p)
