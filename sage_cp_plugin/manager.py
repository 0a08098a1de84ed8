"""`ControlPlaneManager`: admission, the pending queue, event-driven dispatch, results.

The way of one request: validated `RequestMetadata` -> admission (policy gate, bounded
queue) -> the policy's heap -> the dispatcher, woken by events (a submit, a finished
request, a health change, a retry timer) and never by polling, pops the next request of
each pool while an eligible instance has capacity -> the router (or the policy) picks the
instance -> the executor runs it -> the result, timings and SLO outcome are recorded and
the caller's future resolves. Every timestamp comes from the event loop's clock, so the
same code runs on a virtual clock in benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from sage_cp_plugin.admission import Admission
from sage_cp_plugin.attempts import Attempts, RetryRules
from sage_cp_plugin.disaggregation import Disaggregator
from sage_cp_plugin.dispatch import Dispatcher
from sage_cp_plugin.embedding_parts import assemble, split_inputs
from sage_cp_plugin.errors import ConfigurationError, DuplicateInstanceError
from sage_cp_plugin.executor import ExecutionCoordinator, TransportFactory
from sage_cp_plugin.health import HealthConfig, HealthMonitor
from sage_cp_plugin.kvevents.tracker import KVEventTracker
from sage_cp_plugin.kvevents.view import EventsOrApproximateView
from sage_cp_plugin.metrics import MetricsCollector
from sage_cp_plugin.pending import PendingQueue
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.pools import InstancePools
from sage_cp_plugin.results import ResultStore
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
from sage_cp_plugin.scrape import MetricsScraper, ScrapeConfig
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.status import control_plane_status
from sage_cp_plugin.strategies import Strategies
from sage_cp_plugin.streaming import relay_chunks
from sage_cp_plugin.types import (
    ExecutionInstance,
    PDSeparationConfig,
    PerformanceMetrics,
    RequestMetadata,
    RequestResult,
    RequestStatus,
)

logger = logging.getLogger(__name__)


class ControlPlaneManager:
    """The coordinator. Construct, `register_instance(...)`, `await start()`, submit.

    It wires the parts and owns the lifecycle; each concept lives in its own module:
    admission (`admission.Admission`), the pending queue (`pending`), pools and room
    (`pools.InstancePools`), the decision makers in force (`strategies.Strategies`), the
    dispatch loop (`dispatch.Dispatcher`), attempts and retries (`attempts.Attempts`),
    finished results (`results.ResultStore`), streaming and embedding helpers.
    """

    def __init__(
        self,
        scheduling_policy: str = "adaptive",
        routing_strategy: str = "prefix_aware",
        enable_pd_separation: bool = True,
        enable_monitoring: bool = True,
        pd_config: PDSeparationConfig | None = None,
        *,
        enable_auto_scaling: bool = False,
        policy_options: dict[str, Any] | None = None,
        router_options: dict[str, Any] | None = None,
        max_pending_requests: int = 10_000,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.05,
        request_timeout_s: float = 600.0,
        health: HealthConfig | None = None,
        scrape: ScrapeConfig | None = None,
        embedding_batch_size: int = 64,
        urgent_headroom: float = 0.0,
        urgent_ttft_ms: float = 500.0,
        executor: ExecutionCoordinator | None = None,
        transport_factory: TransportFactory | None = None,
        upstream_streaming: bool = True,
        result_retention: int = 10_000,
    ) -> None:
        if enable_auto_scaling:
            raise ConfigurationError(
                "enable_auto_scaling=True is not supported: the control plane routes over the "
                "instances you register; scale the fleet with your orchestrator"
            )
        if max_pending_requests <= 0:
            raise ConfigurationError(
                f"max_pending_requests must be positive, got {max_pending_requests}"
            )
        if max_attempts <= 0:
            raise ConfigurationError(f"max_attempts must be positive, got {max_attempts}")
        if embedding_batch_size <= 0:
            raise ConfigurationError(
                f"embedding_batch_size must be positive, got {embedding_batch_size}"
            )
        if urgent_headroom < 0:
            raise ConfigurationError(f"urgent_headroom must be >= 0, got {urgent_headroom}")
        self.enable_pd_separation = enable_pd_separation
        self.enable_monitoring = enable_monitoring
        self.pd_config = pd_config or PDSeparationConfig(enabled=enable_pd_separation)
        self.strategies = Strategies(
            policy_name=scheduling_policy,
            policy_options=policy_options,
            routing_strategy=routing_strategy,
            router_options=router_options,
            pd_config=self.pd_config,
            enable_pd_separation=enable_pd_separation,
        )
        self.executor = executor or ExecutionCoordinator(
            transport_factory=transport_factory, upstream_streaming=upstream_streaming
        )
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.request_timeout_s = request_timeout_s
        self.embedding_batch_size = embedding_batch_size
        self.urgent_ttft_ms = urgent_ttft_ms
        # What each engine's prefix cache holds; routers read it through the fleet snapshot:
        # exact from vLLM's KV-cache events for instances that publish them (`kv_events`),
        # approximate (what we sent where) for the others.
        self.kv_events = KVEventTracker()
        self.cache_view = EventsOrApproximateView(self.kv_events.view, ApproximatePrefixCache())
        self.fleet = FleetSnapshot(cache_view=self.cache_view)
        self.pools = InstancePools(self.fleet, urgent_headroom=urgent_headroom)
        self.queue = PendingQueue(max_pending_requests)
        self.metrics = MetricsCollector()
        self.results = ResultStore(retention=result_retention, clock=self.now, metrics=self.metrics)
        self.health = HealthMonitor(
            health or HealthConfig(), self.executor.health_check, self._wake
        )
        self.scraper = MetricsScraper(self.executor, scrape or ScrapeConfig())
        attempts = Attempts(
            executor=self.executor,
            strategies=self.strategies,
            results=self.results,
            health=self.health,
            metrics=self.metrics,
            queue=self.queue,
            rules=RetryRules(max_attempts, retry_backoff_s, request_timeout_s),
            clock=self.now,
            is_running=lambda: self._running,
            wake=self._wake,
            cache_view=self.cache_view,
            on_release=self.kv_events.view.on_finish,
        )
        self.dispatcher = Dispatcher(
            queue=self.queue,
            pools=self.pools,
            strategies=self.strategies,
            health=self.health,
            results=self.results,
            attempts=attempts,
            clock=self.now,
            is_running=lambda: self._running,
            request_timeout_s=request_timeout_s,
        )
        self.admission = Admission(
            queue=self.queue,
            pools=self.pools,
            results=self.results,
            strategies=self.strategies,
            metrics=self.metrics,
            clock=self.now,
            wake=self._wake,
            urgent_ttft_ms=urgent_ttft_ms,
            tokenize=self.kv_events.tokenize,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the decision makers in force (swappable at run time) ------------------------------
    @property
    def scheduling_policy(self) -> SchedulingPolicy:
        return self.strategies.scheduling_policy

    @property
    def policy_name(self) -> str:
        return self.strategies.policy_name

    @property
    def router(self) -> Router:
        return self.strategies.router

    @property
    def routing_strategy(self) -> str:
        return self.strategies.routing_strategy

    @property
    def disaggregator(self) -> Disaggregator:
        return self.strategies.disaggregator

    # -- fleet -----------------------------------------------------------------------------
    def register_instance(self, instance: ExecutionInstance) -> None:
        if instance.instance_id in self.fleet.states:
            raise DuplicateInstanceError(
                f"instance id {instance.instance_id!r} is already registered "
                f"(at {self.fleet.states[instance.instance_id].instance.base_url}); "
                "ids must be unique"
            )
        self.kv_events.add_instance(instance)
        state = InstanceState(instance=instance)
        peer = next(
            (s for s in self.fleet.states.values() if s.speed_class == state.speed_class), None
        )
        if peer is not None:
            state.share_speeds(peer)
        self.fleet.states[instance.instance_id] = state
        self.cache_view.set_capacity(state)
        self.pools.invalidate()
        self.executor.register_instance(instance)
        logger.info("registered instance %s at %s", instance.instance_id, instance.base_url)
        self._wake()

    async def unregister_instance(self, instance_id: str) -> None:
        state = self.fleet.states.pop(instance_id, None)
        if state is None:
            raise KeyError(f"unknown instance {instance_id!r}")
        self.pools.invalidate()
        self.router.on_instance_removed(instance_id)
        self.cache_view.on_instance_removed(instance_id)
        await self.kv_events.remove_instance(instance_id)
        await self.executor.unregister_instance(instance_id)
        self._wake()

    def drain_instance(self, instance_id: str) -> None:
        """Stop sending new requests to an instance; in-flight ones finish."""
        self._state(instance_id).draining = True

    def _state(self, instance_id: str) -> InstanceState:
        try:
            return self.fleet.states[instance_id]
        except KeyError:
            raise KeyError(
                f"unknown instance {instance_id!r}; registered: {sorted(self.fleet.states)}"
            ) from None

    def list_models(self) -> list[str]:
        return self.fleet.models()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._loop = asyncio.get_running_loop()
        await self.kv_events.start()
        self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="sage-cp-dispatch"))
        if self.enable_monitoring:
            self._tasks.append(
                asyncio.create_task(
                    self.health.run(lambda: list(self.fleet.states.values())), name="sage-cp-health"
                )
            )
            self._tasks.append(
                asyncio.create_task(
                    self.scraper.run(lambda: list(self.fleet.states.values())),
                    name="sage-cp-scrape",
                )
            )
        self._wake()

    async def stop(self) -> None:
        if not self._running and not self._tasks:
            return
        self._running = False
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.dispatcher.cancel_all()
        for item in list(self.queue.items()):
            self.queue.remove(item.request_id)
            self.results.finish_failed(
                item, "control plane stopped before the request ran", "stopped"
            )
        await self.kv_events.stop()
        await self.executor.aclose()

    async def __aenter__(self) -> ControlPlaneManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _wake(self) -> None:
        self.dispatcher.wake()

    def now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    # -- submission ------------------------------------------------------------------------
    async def submit_request(self, request: RequestMetadata) -> str:
        """Queue a request; returns its id. Raises when it cannot be admitted."""
        item = self.admission.admit(request)
        return item.request_id

    async def wait(self, request_id: str, timeout: float | None = None) -> RequestResult:
        """Wait for a request to finish and return its result (no polling)."""
        return await self.results.wait(request_id, timeout)

    async def generate(self, prompt: str | None = None, **fields: Any) -> RequestResult:
        """Submit and wait: `await manager.generate("Hello", max_tokens=32)`."""
        request = fields.pop("request", None) or RequestMetadata(prompt=prompt, **fields)
        rid = await self.submit_request(request)
        return await self.wait(rid)

    async def stream(
        self, prompt: str | None = None, **fields: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the instance's SSE chunks (OpenAI format) as they arrive.

        Leaving the loop early cancels the upstream request. A failure before any chunk
        is raised as the request's error; retries happen only before the first chunk.
        """
        request = fields.pop("request", None) or RequestMetadata(prompt=prompt, **fields)
        item = self.admission.admit(request, streaming=True)
        async with aclosing(relay_chunks(item, self.cancel)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def embed(
        self,
        inputs: str | list[str],
        *,
        model_name: str | None = None,
        batch_size: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Embeddings for `inputs`, in order, as an OpenAI `/v1/embeddings` response.

        A list longer than `batch_size` is split into sub-requests that run concurrently
        on the embedding instances and are reassembled in input order. Any failed part
        fails the call (raises `UpstreamError`) rather than returning a partial answer.
        """
        parts = split_inputs(inputs, batch_size or self.embedding_batch_size)
        ids = [
            await self.submit_request(RequestMetadata(input=part, model_name=model_name, **fields))
            for part in parts
        ]
        results = await asyncio.gather(*(self.wait(i) for i in ids))
        return assemble(list(results), model_name)

    def cancel(self, request_id: str, reason: str = "cancelled by caller") -> bool:
        item = self.results.live(request_id)
        if item is None:
            return False
        if self.queue.remove(request_id) is not None:
            self.results.finish_failed(item, reason, "cancelled", state=RequestStatus.CANCELLED)
            return True
        return self.dispatcher.cancel(request_id, reason)

    # -- results ---------------------------------------------------------------------------
    async def get_request_status(self, request_id: str) -> RequestResult:
        return self.results.status(request_id, self.dispatcher.instance_of)

    # -- policy / router at run time -------------------------------------------------------
    def update_policy(self, name: str, **options: Any) -> None:
        policy = self.strategies.update_policy(name, **options)
        self.queue.rekey(policy.key)
        self._wake()

    def update_router(self, name: str, **options: Any) -> None:
        self.strategies.update_router(name, **options)
        self._wake()

    # -- metrics ---------------------------------------------------------------------------
    def get_metrics(self) -> PerformanceMetrics:
        now = self.now() if self._loop is not None else 0.0
        switches = getattr(self.scheduling_policy, "switches", [])
        cap = self.fleet.total_capacity()
        return self.metrics.snapshot(
            now,
            active=self.dispatcher.in_flight_count(),
            queued=len(self.queue),
            policy=self.scheduling_policy.describe(),
            policy_switches=len(switches),
            gpu_utilization=(self.fleet.total_in_flight() / cap) if cap else 0.0,
        )

    def get_status(self) -> dict[str, Any]:
        return control_plane_status(
            running=self._running,
            strategies=self.strategies,
            pending=len(self.queue),
            running_requests=self.dispatcher.in_flight_count(),
            fleet=self.fleet,
            kv_cache=self.kv_events.status,
        )
