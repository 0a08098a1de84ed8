"""Keeps the coordinator's fleet equal to what the discovery sources see.

- A newly seen instance is registered only after its server answers ``/v1/models`` (the
  models it lists become its ``served_models`` when the source did not name one); until then
  it is *pending* and re-probed on every reconcile, so it never receives a request early.
- A vanished instance is drained at once (no new request), and unregistered when its
  in-flight requests have ended.
- An instance whose address changed (a pod IP change) is unregistered at once -- the old
  address is gone -- and re-enters through the probe like a new one.
- Only instances this reconciler registered are ever drained or removed: the configuration's
  fleet and instances added through the admin API are left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from sage_cp_plugin.elastic.discovery import Snapshot
from sage_cp_plugin.state import FleetSnapshot
from sage_cp_plugin.types import ExecutionInstance

logger = logging.getLogger(__name__)

ModelsProbe = Callable[[ExecutionInstance], Awaitable[list[str] | None]]


class FleetOps(Protocol):
    """The part of `ControlPlaneManager` the reconciler drives."""

    fleet: FleetSnapshot

    def register_instance(self, instance: ExecutionInstance) -> None: ...
    async def unregister_instance(self, instance_id: str) -> None: ...
    def drain_instance(self, instance_id: str) -> None: ...


def http_models_probe(timeout_s: float = 2.0) -> ModelsProbe:
    """``GET /v1/models`` on the instance; the model ids, or None when it does not answer."""

    async def probe(inst: ExecutionInstance) -> list[str] | None:
        try:
            async with httpx.AsyncClient(base_url=inst.base_url, timeout=timeout_s) as c:
                resp = await c.get("/v1/models")
            if resp.status_code != 200:
                return None
            return [str(m["id"]) for m in resp.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    return probe


@dataclass
class FleetReconciler:
    fleet_ops: FleetOps
    probe: ModelsProbe = field(default_factory=http_models_probe)
    views: dict[str, Snapshot] = field(default_factory=dict)  # source -> its last view
    owned: dict[str, str] = field(default_factory=dict)  # instance id -> base_url registered
    removing: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)  # seen, not yet answering /v1/models
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def wanted(self) -> Snapshot:
        out: Snapshot = {}
        for view in self.views.values():
            out.update(view)
        return out

    async def publish(self, source: str, snapshot: Snapshot) -> None:
        self.views[source] = snapshot
        await self.reconcile()

    async def reconcile(self) -> None:
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        wanted, states = self.wanted(), self.fleet_ops.fleet.states
        for iid in list(self.owned):
            inst = wanted.get(iid)
            if inst is not None and inst.base_url != self.owned[iid]:
                logger.info("instance %s moved %s -> %s", iid, self.owned[iid], inst.base_url)
                await self._remove(iid)
            elif inst is None and iid not in self.removing:
                logger.info("instance %s vanished from discovery: draining", iid)
                self.removing.add(iid)
                if iid in states:
                    self.fleet_ops.drain_instance(iid)
        new = [i for iid, i in wanted.items() if iid not in self.owned and iid not in states]
        answers = await asyncio.gather(*(self.probe(i) for i in new))
        self.pending = set()
        for inst, models in zip(new, answers, strict=True):
            if models is None or not (inst.served_models or models):
                self.pending.add(inst.instance_id)
                continue
            if not inst.served_models:
                inst = inst.model_copy(update={"served_models": models, "model_name": models[0]})
            self.fleet_ops.register_instance(inst)
            self.owned[inst.instance_id] = inst.base_url
        await self.collect_idle()

    async def collect_idle(self) -> None:
        """Unregister drained instances whose last request has ended."""
        states = self.fleet_ops.fleet.states
        for iid in list(self.removing):
            state = states.get(iid)
            if state is None or state.in_flight == 0:
                await self._remove(iid)

    async def _remove(self, iid: str) -> None:
        self.owned.pop(iid, None)
        self.removing.discard(iid)
        if iid in self.fleet_ops.fleet.states:
            await self.fleet_ops.unregister_instance(iid)

    async def run(self, interval_s: float) -> None:
        """Re-probe pending instances and collect drained ones every ``interval_s``."""
        while True:
            await asyncio.sleep(interval_s)
            await self.reconcile()
