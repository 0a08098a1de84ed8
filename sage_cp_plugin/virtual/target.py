"""What a replay runs against: the fleet as the coordinator sees it, plus its simulators.

`InProcessFleet` (virtual or real time, no sockets) and `LoopbackFleet` (real uvicorn servers
on 127.0.0.1, real time only) both satisfy `ReplayTarget`, so one replay function drives the
same scenario either way -- which is how virtual-clock results are checked against loopback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Protocol

import httpx

from sage_cp_plugin.sim import SimFleet, SimInstance
from sage_cp_plugin.types import ExecutionInstance
from sage_cp_plugin.virtual.fleet import MemberSpec, describe


class ReplayTarget(Protocol):
    @property
    def instances(self) -> list[ExecutionInstance]: ...

    def transport_factory(self, instance: ExecutionInstance) -> httpx.AsyncBaseTransport: ...

    @property
    def mounted(self) -> bool:
        """True when `transport_factory` must be used (in-process apps)."""
        ...

    def sims(self) -> list[SimInstance]: ...

    def kill(self, i: int) -> None: ...

    async def aclose(self) -> None: ...


def engine_totals(sims: Sequence[SimInstance]) -> dict[str, int]:
    """Summed engine counters (prompt tokens, prefix-cache hits, preemptions...)."""
    totals: dict[str, int] = {}
    for sim in sims:
        for k, v in asdict(sim.engine.counters).items():
            totals[k] = totals.get(k, 0) + int(v)
    return totals


class LoopbackFleet:
    """Simulators behind real uvicorn servers on 127.0.0.1 (start with `await start()`)."""

    mounted = False

    def __init__(self, members: Sequence[MemberSpec]) -> None:
        self.specs = list(members)
        self.fleet = SimFleet([m.config for m in self.specs])
        self._instances: list[ExecutionInstance] = []

    async def start(self) -> None:
        await self.fleet.start()
        self._instances = []
        for i, (spec, member) in enumerate(zip(self.specs, self.fleet.members, strict=True)):
            inst = describe(spec, i)
            self._instances.append(
                inst.model_copy(update={"host": member.host, "port": member.port})
            )

    @property
    def instances(self) -> list[ExecutionInstance]:
        return self._instances

    def transport_factory(self, instance: ExecutionInstance) -> httpx.AsyncBaseTransport:
        raise RuntimeError("a loopback fleet is reached over real sockets")

    def sims(self) -> list[SimInstance]:
        return [m.sim for m in self.fleet.members if m.app is not None]

    def kill(self, i: int) -> None:
        raise NotImplementedError("use SimFleet.kill (async) on a loopback fleet")

    async def aclose(self) -> None:
        await self.fleet.stop()
