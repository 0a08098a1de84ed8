"""An in-process simulated fleet for trying pipelines fast (tests, examples, notebooks).

`ControlPlaneService(manager_factory=inprocess_fleet())`: the simulators are mounted on the
coordinator's HTTP client (no sockets), and `time_scale=0` answers as fast as the code runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.sim import SimInstanceConfig

from .inputs import PreparedRequest
from .records import ResultRecord


def inprocess_fleet(
    generation: int = 2,
    embedding: int = 1,
    *,
    time_scale: float = 0.0,
    **manager_kwargs: Any,
) -> Callable[[], AbstractAsyncContextManager[ControlPlaneManager]]:
    """A `manager_factory`: `sim-model` x `generation` and `sim-embed` x `embedding`."""
    from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec

    configs = [
        SimInstanceConfig(served_model_names=["sim-model"], time_scale=time_scale, seed=i)
        for i in range(generation)
    ] + [
        SimInstanceConfig(
            served_model_names=["sim-embed"],
            role="embedding",
            time_scale=time_scale,
            b0_ms=2.0,
            b1_us_per_token=1.0,
            b2_us_per_seq=0.0,
            seed=100 + i,
        )
        for i in range(embedding)
    ]
    manager_kwargs.setdefault("scheduling_policy", "fifo")
    manager_kwargs.setdefault("enable_pd_separation", False)

    @asynccontextmanager
    async def factory() -> AsyncIterator[ControlPlaneManager]:
        fleet = InProcessFleet([MemberSpec(c, max_concurrent_requests=256) for c in configs])
        manager = ControlPlaneManager(transport_factory=fleet.transport_factory, **manager_kwargs)
        for inst in fleet.instances:
            manager.register_instance(inst)
        await manager.start()
        try:
            yield manager
        finally:
            await manager.stop()
            await fleet.aclose()

    return factory


class EchoBackend:
    """A `Backend` answering at once with the prompt echoed back: exercises the plumbing
    (SAGE, the service, the operators) without any coordinator cost."""

    description = "echo backend (no coordinator)"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.peak_in_flight = 0
        self.calls = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run(self, prepared: PreparedRequest) -> ResultRecord:
        import asyncio

        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        text = prepared.request.prompt_text()
        return ResultRecord(
            custom_id=prepared.custom_id,
            request_id=prepared.request.request_id,
            kind=prepared.kind,
            body={"object": "echo", "text": text},
            output=text,
            line=prepared.line,
        )

    async def metrics(self) -> dict[str, Any]:
        return {"calls": self.calls, "peak_in_flight": self.peak_in_flight}
