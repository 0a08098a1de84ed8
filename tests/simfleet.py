"""Helpers to put a ControlPlaneManager in front of a real simulated fleet over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.config import sim_instances
from sage_cp_plugin.sim import SimFleet, SimInstanceConfig


@asynccontextmanager
async def managed_fleet(
    configs: Sequence[SimInstanceConfig],
    *,
    instance_fields: dict[str, Any] | None = None,
    **manager_kwargs: Any,
) -> AsyncIterator[tuple[ControlPlaneManager, SimFleet]]:
    manager_kwargs.setdefault("scheduling_policy", "fifo")
    manager_kwargs.setdefault("enable_pd_separation", False)
    async with SimFleet(configs) as fleet:
        manager = ControlPlaneManager(**manager_kwargs)
        for inst in sim_instances(fleet.members, **(instance_fields or {})):
            manager.register_instance(inst)
        await manager.start()
        try:
            yield manager, fleet
        finally:
            await manager.stop()


def gen(n: int = 1, time_scale: float = 0.02, **fields: Any) -> list[SimInstanceConfig]:
    return [SimInstanceConfig(time_scale=time_scale, seed=i, **fields) for i in range(n)]
