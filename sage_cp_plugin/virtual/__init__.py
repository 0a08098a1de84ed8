"""Virtual-time replay: the real coordinator against in-process simulators, at fleet scale.

    from sage_cp_plugin.virtual import InProcessFleet, CoordinatorConfig, run_replay
    from sage_cp_plugin.sim import SimInstanceConfig

    fleet = InProcessFleet([SimInstanceConfig(seed=i) for i in range(4)])
    result = run_replay(workload, fleet, CoordinatorConfig(policy="fifo", router="prefix_aware"))

- `VirtualClockEventLoop` / `run_virtual`: an asyncio loop whose clock jumps to the next timer.
- `StreamingASGITransport`: httpx transport to an in-process ASGI app that streams bodies.
- `InProcessFleet`: simulated instances mounted in-process, with kill/revive.
- `replay` / `run_replay`: a workload through `ControlPlaneManager`, with per-request outcomes.
"""

from __future__ import annotations

from sage_cp_plugin.virtual.clock import VirtualClockEventLoop, run_virtual
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import (
    CoordinatorConfig,
    RequestOutcome,
    RunResult,
    replay,
    run_replay,
)
from sage_cp_plugin.virtual.summary import summarize
from sage_cp_plugin.virtual.transport import StreamingASGITransport

__all__ = [
    "CoordinatorConfig",
    "InProcessFleet",
    "MemberSpec",
    "RequestOutcome",
    "RunResult",
    "StreamingASGITransport",
    "VirtualClockEventLoop",
    "replay",
    "run_replay",
    "run_virtual",
    "summarize",
]
