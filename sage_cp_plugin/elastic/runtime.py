"""The elastic fleet's tasks inside a running coordinator: one per discovery source, the
reconciler's periodic pass, and (with ``enable_auto_scaling``) the autoscaling loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

from sage_cp_plugin.elastic.discovery import DiscoveryConfig, DiscoverySource
from sage_cp_plugin.elastic.reconciler import FleetOps, FleetReconciler, ModelsProbe
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.options import ControlPlaneOptions

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
    ) -> None:
        self.sources = sources
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
        for src in self.sources:
            close = getattr(src, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def build_elastic(fleet_ops: FleetOps, options: ControlPlaneOptions) -> ElasticFleet | None:
    """The manager's elastic part from its options, or None when nothing is configured."""
    if not options.discovery:
        return None
    return ElasticFleet(
        fleet_ops, build_sources(options.discovery), interval_s=options.discovery_interval_s
    )
