"""Entry point of the child processes of `sage-cp serve --workers N`:
`python -m sage_cp_plugin.entrypoints.gateway.workers.child scheduler|worker ...`.

Settings come in the environment (`SETTINGS_ENV`, JSON; removed once read, so no process
started from here inherits the keys); each child asks the kernel to end it when the
supervisor dies (PR_SET_PDEATHSIG), so no child outlives it even after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import sys
from pathlib import Path

from ..settings import GatewaySettings

SETTINGS_ENV = "SAGE_CP_GATEWAY_SETTINGS"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own cleanup must do
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    role, run_dir_arg, parent, handoff_fd, index = (
        argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4]),
    )  # fmt: skip
    _die_with_parent(parent)
    settings = GatewaySettings.model_validate(json.loads(os.environ.pop(SETTINGS_ENV)))
    run_dir = Path(run_dir_arg)
    handoff = socket.socket(fileno=handoff_fd)
    control, http = run_dir / "control.sock", run_dir / "http.sock"
    # Tracing (checked by `sage-cp serve` before it started us): each process has its own
    # provider and exports its own spans of a request (docs/tracing.md, "--workers").
    from sage_cp_plugin import tracing
    from sage_cp_plugin.config import ControlPlaneConfig

    config = ControlPlaneConfig.load(run_dir / "config.json")
    tracing.configure(config.tracing)
    try:
        if role == "scheduler":
            from .scheduler import serve_scheduler

            if config.uses_embedded_fleet:  # the simulated engines run here: their spans
                tracing.configure_engine(config.tracing)

            def ready(models: list[str]) -> None:
                handoff.sendall(("ready " + json.dumps(models) + "\n").encode())

            _run(serve_scheduler(settings, run_dir / "config.json", control, http, index, ready))
        else:
            from .worker import serve_worker

            _run(serve_worker(index, settings, handoff, str(control), str(http)))
    finally:
        tracing.shutdown()  # flush the spans still batched
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
