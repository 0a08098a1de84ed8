"""Simulated vLLM instances mounted in-process: no sockets, same HTTP code path.

`InProcessFleet(configs)` creates one simulator app per `SimInstanceConfig`, describes each
as an `ExecutionInstance` for the coordinator, and hands the coordinator a
`transport_factory` that connects its per-instance `httpx.AsyncClient` to the app through a
`StreamingASGITransport`. Instances can crash (`kill`) and come back (`revive`) mid-run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette

from sage_cp_plugin.kvevents.tracker import KVEventTracker
from sage_cp_plugin.sim import SimInstance, SimInstanceConfig, create_app, instance_of
from sage_cp_plugin.sim.presets import PRESETS
from sage_cp_plugin.types import ExecutionInstance
from sage_cp_plugin.virtual.direct import DirectSimTransport
from sage_cp_plugin.virtual.transport import StreamingASGITransport

# Base URLs are never dialled (the transport short-circuits them); ports only keep them unique.
_BASE_PORT = 20000


@dataclass(frozen=True)
class MemberSpec:
    """One simulated instance and how the coordinator should see it.

    `max_concurrent_requests` is the coordinator's admission cap per instance: requests beyond
    it wait in the coordinator's queue, where the scheduling policy orders them.
    """

    config: SimInstanceConfig
    max_concurrent_requests: int = 64
    instance_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # ExecutionInstance fields
    # Feed the simulator's KV-cache events straight into the coordinator's index (no sockets,
    # the same decode/apply code as a ZeroMQ subscriber): prefix routers then run "exact".
    kv_events: bool = False


def describe(spec: MemberSpec, index: int) -> ExecutionInstance:
    """The `ExecutionInstance` the coordinator registers for a simulated instance."""
    cfg = spec.config
    tp = PRESETS[cfg.preset].tp
    fields: dict[str, Any] = {
        "instance_id": spec.instance_id or f"sim-{index}",
        "host": "127.0.0.1",
        "port": _BASE_PORT + index,
        "model_name": cfg.model_name,
        "served_models": list(cfg.served_model_names),
        "instance_type": cfg.instance_type,
        "tensor_parallel_size": tp,
        "gpu_count": tp,
        "max_concurrent_requests": spec.max_concurrent_requests,
        "scheduling_policy": cfg.scheduling_policy,
        # What an operator knows of a vLLM server's engine (its KV cache size is logged at
        # start and shown in `vllm:cache_config_info`; the chunk budget is a flag).
        "metadata": {
            "kv_capacity_tokens": cfg.num_kv_blocks * cfg.block_size,
            "max_num_batched_tokens": cfg.max_num_batched_tokens,
        },
    }
    if spec.kv_events:
        fields["tokenizer"] = "sim"
    fields.update(spec.extra)
    return ExecutionInstance(**fields)


class InProcessFleet:
    """N in-process simulators plus the coordinator-side view of them."""

    def __init__(
        self, members: Sequence[MemberSpec | SimInstanceConfig], *, direct: bool = False
    ) -> None:
        """`direct=True`: completions skip the ASGI framing (`virtual/direct.py`, for fast
        replays; same handlers, engine and coordinator code path)."""
        specs = [m if isinstance(m, MemberSpec) else MemberSpec(m) for m in members]
        self.specs = specs
        self.instances = [describe(s, i) for i, s in enumerate(specs)]
        self.apps: list[Starlette] = [create_app(s.config) for s in specs]
        self.transports: list[StreamingASGITransport] = [
            DirectSimTransport(app, instance_of(app)) if direct else StreamingASGITransport(app)
            for app in self.apps
        ]
        self._index = {inst.instance_id: i for i, inst in enumerate(self.instances)}
        if len(self._index) != len(self.instances):
            raise ValueError("instance ids of an InProcessFleet must be unique")

    def __len__(self) -> int:
        return len(self.instances)

    def attach_kv_events(self, tracker: KVEventTracker) -> None:
        """Connect members with ``kv_events=True`` to ``tracker`` (a manager's `kv_events`)."""
        for spec, inst, app in zip(self.specs, self.instances, self.apps, strict=True):
            if spec.kv_events:
                instance_of(app).attach_kv_events(tracker.in_process_feed(inst.instance_id))

    def transport_factory(self, instance: ExecutionInstance) -> httpx.AsyncBaseTransport:
        """Pass as `ControlPlaneManager(transport_factory=fleet.transport_factory)`."""
        return self.transports[self._index[instance.instance_id]]

    def sim(self, i: int) -> SimInstance:
        return instance_of(self.apps[i])

    def index_of(self, instance_id: str) -> int:
        return self._index[instance_id]

    def kill(self, i: int) -> None:
        """Crash instance `i`: connections reset, new ones refused, its engine's work lost."""
        self.transports[i].kill()
        sim = self.sim(i)
        engine = sim.engine
        sch = engine.scheduler
        for seq in [*sch.running, *sch.waiting, *sch.transferring]:
            engine.abort(seq)

    def revive(self, i: int) -> None:
        """Bring instance `i` back (its prefix cache survives; a real restart would lose it)."""
        self.transports[i].revive()

    mounted = True

    def sims(self) -> list[SimInstance]:
        return [instance_of(app) for app in self.apps]

    async def aclose(self) -> None:
        for app in self.apps:
            await instance_of(app).aclose()
