"""A vLLM-compatible simulator: same endpoints, metric names, SSE format and PD protocol.

Quick use::

    from sage_cp_plugin.sim import SimFleet, SimInstanceConfig

    async with SimFleet([SimInstanceConfig(time_scale=0.1)] * 2) as fleet:
        print(fleet.urls)                 # http://127.0.0.1:<port> each

    app = create_app(SimInstanceConfig(time_scale=0))   # in-process, httpx.ASGITransport
"""

from __future__ import annotations

from sage_cp_plugin.sim.app import SimInstance, create_app, instance_of
from sage_cp_plugin.sim.config import FaultConfig, SimInstanceConfig, SimRole
from sage_cp_plugin.sim.engine import PromptTooLongError, SimEngine
from sage_cp_plugin.sim.fleet import (
    DEFAULT_FLEET_TIME_SCALE,
    SimFleet,
    SimFleetMember,
    SimFleetThread,
    embedded_default_fleet,
)
from sage_cp_plugin.sim.kv_cache import KVCache
from sage_cp_plugin.sim.presets import DEFAULT_PRESET, PRESETS, EnginePreset, get_preset
from sage_cp_plugin.sim.sequence import EngineCounters, SimSequence

__all__ = [
    "DEFAULT_FLEET_TIME_SCALE",
    "DEFAULT_PRESET",
    "PRESETS",
    "EngineCounters",
    "EnginePreset",
    "FaultConfig",
    "KVCache",
    "PromptTooLongError",
    "SimEngine",
    "SimFleet",
    "SimFleetMember",
    "SimFleetThread",
    "SimInstance",
    "SimInstanceConfig",
    "SimRole",
    "SimSequence",
    "create_app",
    "embedded_default_fleet",
    "get_preset",
    "instance_of",
]
