"""The elastic fleet's tasks inside a running coordinator: one per discovery source, the
reconciler's periodic pass, and (with ``enable_auto_scaling``) the autoscaling loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any, Protocol

from sage_cp_plugin.elastic.controller import AutoscaleController
from sage_cp_plugin.elastic.discovery import DiscoveryConfig, DiscoverySource
from sage_cp_plugin.elastic.reconciler import FleetOps, FleetReconciler, ModelsProbe
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.metrics import MetricsCollector
from sage_cp_plugin.options import ControlPlaneOptions
from sage_cp_plugin.pending import PendingQueue

logger = logging.getLogger(__name__)


def build_sources(configs: list[DiscoveryConfig]) -> list[DiscoverySource]:
    from sage_cp_plugin.plugins.registry import get_registry

    sources: list[DiscoverySource] = []
    names: set[str] = set()
    for c in configs:
        src = get_registry().create("discovery source", c.source, **c.options)
        if src.name in names:
            raise ConfigurationError(
                f"two discovery sources are named {src.name!r}; give one a different name="
            )
        names.add(src.name)
        sources.append(src)
    return sources


class ElasticFleet:
    def __init__(
        self,
        fleet_ops: FleetOps,
        sources: list[DiscoverySource],
        *,
        interval_s: float = 2.0,
        probe: ModelsProbe | None = None,
        controller: AutoscaleController | None = None,
    ) -> None:
        self.sources = sources
        self.controller = controller
        self.interval_s = interval_s
        self.reconciler = FleetReconciler(fleet_ops, probe) if probe else FleetReconciler(fleet_ops)
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        for src in self.sources:
            publish = partial(self.reconciler.publish, src.name)
            self._tasks.append(asyncio.create_task(self._guard(src, publish),
                                                   name=f"sage-cp-discovery-{src.name}"))  # fmt: skip
        self._tasks.append(
            asyncio.create_task(self.reconciler.run(self.interval_s), name="sage-cp-reconcile")
        )
        if self.controller is not None:
            self._tasks.append(asyncio.create_task(self.controller.run(), name="sage-cp-autoscale"))

    async def _guard(self, src: DiscoverySource, publish: Any) -> None:
        # A source that crashes is logged and restarted: discovery must outlive a bad event.
        while True:
            try:
                await src.run(publish)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("discovery source %s failed; restarting it", src.name)
                await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        closing: list[Any] = list(self.sources)
        if self.controller is not None and self.controller.actuator not in closing:
            closing.append(self.controller.actuator)
        for src in closing:
            close = getattr(src, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


class ManagerParts(FleetOps, Protocol):
    """What `build_elastic` needs of `ControlPlaneManager`."""

    metrics: MetricsCollector
    queue: PendingQueue

    def now(self) -> float: ...


def build_elastic(manager: ManagerParts, options: ControlPlaneOptions) -> ElasticFleet | None:
    """The manager's elastic part from its options, or None when nothing is configured."""
    if not options.discovery and not options.enable_auto_scaling:
        return None
    sources = build_sources(options.discovery)
    controller = None
    if options.enable_auto_scaling:
        from sage_cp_plugin.plugins.registry import get_registry

        settings = options.autoscaling
        actuator = get_registry().create("actuator", settings.actuator, **settings.actuator_options)
        bind = getattr(actuator, "bind", None)
        if bind is not None:
            bind(manager.fleet)
        if hasattr(actuator, "run"):  # it also reports the instances it keeps
            sources.append(actuator)
        controller = AutoscaleController(
            settings, actuator, fleet=manager.fleet, metrics=manager.metrics,
            queue=manager.queue, clock=manager.now,
        )  # fmt: skip
    return ElasticFleet(
        manager, sources, interval_s=options.discovery_interval_s, controller=controller
    )
