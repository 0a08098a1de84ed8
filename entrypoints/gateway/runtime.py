"""`Gateway`: what every handler needs (manager, settings, metrics) plus the gateway's own
state: whether it is shutting down, and the drain watchers started by the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.types import RequestStatus

from .experiment import GatewayExperiment
from .inflight import InflightBytes
from .metrics import GatewayMetrics
from .settings import GatewaySettings

if TYPE_CHECKING:
    from sage_cp_plugin.fleetshare.sync import FleetShare

    from .handover import Handover
    from .workers.scheduler import WorkerPool

logger = logging.getLogger(__name__)


@dataclass
class Gateway:
    manager: ControlPlaneManager
    settings: GatewaySettings
    metrics: GatewayMetrics = field(init=False)
    experiment: GatewayExperiment = field(init=False)  # A/B arms (experiment.py)
    inflight: InflightBytes = field(init=False)  # bytes held by requests in flight
    shutting_down: bool = False
    share: FleetShare | None = None  # state shared with other replicas (--redis-url)
    handover: Handover | None = None  # forwards requests a peer claimed (handover.py)
    workers: WorkerPool | None = None  # the forwarding workers of `serve --workers N`
    _drains: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Clients waiting on each request id here (the first caller and resends joining it):
    # only the last one to leave cancels the run. Entries go when their count does.
    _waiting: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = GatewayMetrics(self.manager)
        self.experiment = GatewayExperiment(self)
        self.inflight = InflightBytes(self.settings.max_inflight_bytes)
        self.metrics.result_hooks.append(self.experiment.observe)

    async def knows(self, request_id: str) -> bool:
        """Whether a request with this id is in flight or its result is still retained
        (`x-request-id` is idempotent: such a resend joins it)."""
        try:
            result = await self.manager.get_request_status(request_id)
        except KeyError:
            return False
        if result.state == RequestStatus.CANCELLED:
            # Cancelled because its client left (or by an admin): the resend is the client
            # asking again, so it runs again instead of getting "cancelled" back.
            self.manager.results.forget(request_id)
            return False
        return True

    def wait_on(self, request_id: str) -> None:
        self._waiting[request_id] = self._waiting.get(request_id, 0) + 1

    def stop_waiting(self, request_id: str) -> int:
        """One client stopped waiting on the request; returns how many still wait."""
        left = self._waiting.get(request_id, 1) - 1
        if left > 0:
            self._waiting[request_id] = left
        else:
            self._waiting.pop(request_id, None)
        return left

    # -- drain then remove -----------------------------------------------------------------
    def drain_and_remove(self, instance_id: str) -> None:
        """Stop routing to the instance now; unregister it once its in-flight requests end."""
        self.manager.drain_instance(instance_id)
        if instance_id not in self._drains:
            self._drains[instance_id] = asyncio.create_task(
                self._remove_when_idle(instance_id), name=f"sage-cp-drain-{instance_id}"
            )

    def draining(self) -> list[str]:
        return sorted(self._drains)

    async def _remove_when_idle(self, instance_id: str) -> None:
        # The core has no "instance became idle" event; an admin drain is rare, so a short
        # poll here costs nothing on the request path.
        try:
            while True:
                state = self.manager.fleet.get(instance_id)
                if state is None:
                    return
                if state.in_flight == 0:
                    await self.manager.unregister_instance(instance_id)
                    logger.info("drained instance %s removed", instance_id)
                    return
                await asyncio.sleep(self.settings.drain_check_interval_s)
        except KeyError:
            return  # removed meanwhile by DELETE
        finally:
            self._drains.pop(instance_id, None)

    async def aclose(self) -> None:
        await self.experiment.aclose()
        tasks = list(self._drains.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
