"""`ControlPlaneManager`: the coordinator's public face; it wires the parts and owns their
lifecycle (docs/architecture.md §2-3).

The way of one request: validated `RequestMetadata` -> admission (`admission.py`: checks,
bounded queue) -> the policy's heap (`pending.py`) -> the dispatcher (`dispatch.py`), woken
by events (a submit, a finished request, a health change, a retry timer) and never by
polling -> the router or policy picks the instance -> an attempt (`attempts.py`) runs it
through the executor -> the result, timings, cost and SLO outcome land in the result store
(`results.py`) and the caller's future resolves. Every timestamp comes from the event loop's
clock, so the same code runs on a virtual clock in benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from sage_cp_plugin import tracing
from sage_cp_plugin.admission import Admission
from sage_cp_plugin.attempts import Attempts, RetryRules
from sage_cp_plugin.concurrency_limit import ConcurrencyLimits
from sage_cp_plugin.disaggregation import Disaggregator
from sage_cp_plugin.dispatch import Dispatcher
from sage_cp_plugin.elastic.runtime import build_elastic
from sage_cp_plugin.embedding_parts import assemble, split_inputs
from sage_cp_plugin.errors import (
    ConfigurationError,
    DuplicateInstanceError,
    RequestTimeoutError,
)
from sage_cp_plugin.executor import ExecutionCoordinator, TransportFactory
from sage_cp_plugin.health import HealthMonitor
from sage_cp_plugin.kvevents.tracker import KVEventTracker
from sage_cp_plugin.kvevents.view import EventsOrApproximateView
from sage_cp_plugin.metrics import MetricsCollector
from sage_cp_plugin.options import ControlPlaneOptions, build_options
from sage_cp_plugin.pending import PendingQueue
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.pools import InstancePools
from sage_cp_plugin.quotas import QuotaLedger, charge_quota
from sage_cp_plugin.rate_limits import RateLimiter, charged_once
from sage_cp_plugin.recording.recorder import RequestRecorder
from sage_cp_plugin.results import ResultStore
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
from sage_cp_plugin.scrape import MetricsScraper
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.status import control_plane_status
from sage_cp_plugin.strategies import Strategies
from sage_cp_plugin.streaming import relay_chunk_batches, relay_chunks
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
        executor: ExecutionCoordinator | None = None,
        transport_factory: TransportFactory | None = None,
        options: ControlPlaneOptions | None = None,
        **settings: Any,
    ) -> None:
        """The document's five arguments, then any field of `ControlPlaneOptions` by name
        (`max_pending_requests=...`, `health=HealthConfig(...)`, ...), or `options=` whole."""
        if options is None:
            options = build_options(
                "ControlPlaneManager",
                scheduling_policy=scheduling_policy,
                routing_strategy=routing_strategy,
                enable_pd_separation=enable_pd_separation,
                enable_monitoring=enable_monitoring,
                pd=pd_config,
                **settings,
            )
        elif settings:
            raise ConfigurationError(
                f"pass settings either in options= or by name, not both: {sorted(settings)}"
            )
        self.options = o = options
        self.enable_pd_separation = o.enable_pd_separation
        self.enable_monitoring = o.enable_monitoring
        self.pd_config = o.pd_config()
        self.strategies = Strategies(
            policy_name=o.scheduling_policy,
            policy_options=o.policy_options,
            routing_strategy=o.routing_strategy,
            router_options=o.router_options,
            pd_config=self.pd_config,
            enable_pd_separation=o.enable_pd_separation,
        )
        self.executor = executor or ExecutionCoordinator(
            transport_factory=transport_factory, upstream_streaming=o.upstream_streaming
        )
        self.max_attempts = o.max_attempts
        self.retry_backoff_s = o.retry_backoff_s
        self.request_timeout_s = o.request_timeout_s
        self.embedding_batch_size = o.embedding_batch_size
        # What each engine's prefix cache holds; routers read it through the fleet snapshot:
        # exact from vLLM's KV-cache events for instances that publish them (`kv_events`),
        # approximate (what we sent where) for the others.
        self.kv_events = KVEventTracker()
        self.cache_view = EventsOrApproximateView(self.kv_events.view, ApproximatePrefixCache())
        self.fleet = FleetSnapshot(cache_view=self.cache_view)
        self.limits = ConcurrencyLimits(reserve=o.ttft_reserve) if o.adaptive_concurrency else None
        self.pools = InstancePools(
            self.fleet, urgent_headroom=o.urgent_headroom, limits=self.limits
        )
        self.queue = PendingQueue(o.max_pending_requests)
        self.metrics = MetricsCollector(max_tag_series=o.max_tag_series)
        self.results = ResultStore(
            retention=o.result_retention,
            retention_bytes=o.result_retention_bytes,
            clock=self.now,
            metrics=self.metrics,
        )
        # The opt-in request log (recording/): sees every request as it ends.
        self.recorder = RequestRecorder(o.request_log, self.now) if o.request_log else None
        if self.recorder is not None:
            self.results.observers.append(self.recorder.observe)
        # Tracing (tracing/, docs/tracing.md): configured here when the options ask for it.
        # The observer that ends request spans is always registered: tracing may be turned
        # on after this manager is built (its requests' spans must still end); off, it
        # returns at its first test (one call per request).
        if o.tracing is not None and not tracing.enabled():
            tracing.configure(o.tracing)
        self.results.observers.append(tracing.on_result)
        self.health = HealthMonitor(o.health, self.executor.health_check, self._wake)
        self.scraper = MetricsScraper(self.executor, o.scrape)
        attempts = Attempts(
            executor=self.executor,
            strategies=self.strategies,
            results=self.results,
            health=self.health,
            metrics=self.metrics,
            queue=self.queue,
            rules=RetryRules(o.max_attempts, o.retry_backoff_s, o.request_timeout_s),
            limits=self.limits,
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
            request_timeout_s=o.request_timeout_s,
        )
        self.admission = Admission(
            queue=self.queue,
            pools=self.pools,
            results=self.results,
            strategies=self.strategies,
            metrics=self.metrics,
            clock=self.now,
            wake=self._wake,
            urgent_ttft_ms=o.urgent_ttft_ms,
            tokenize=self.kv_events.tokenize,
            rate_limiter=RateLimiter(o.rate_limits) if o.rate_limits is not None else None,
            quotas=QuotaLedger(o.quotas, time.time) if o.quotas is not None else None,
        )
        if self.admission.quotas is not None:
            self.results.observers.append(charge_quota(self.admission.quotas))
        self._tasks: list[asyncio.Task[Any]] = []
        # Discovery sources and autoscaling (docs/elastic-fleet.md); None when not configured.
        self.elastic = build_elastic(self, o)
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
        # The document's status flags, as given at registration: an unavailable instance
        # joins drained, an unhealthy one waits for a passing probe.
        state = InstanceState(
            instance=instance, healthy=instance.is_healthy, draining=not instance.is_available
        )
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
        self.dispatcher.attempts.meter.forget(instance_id)
        if self.limits is not None:
            self.limits.forget(instance_id)
        self.router.on_instance_removed(instance_id)
        self.cache_view.on_instance_removed(instance_id)
        await self.kv_events.remove_instance(instance_id)
        await self.executor.unregister_instance(instance_id)
        self._wake()

    def drain_instance(self, instance_id: str) -> None:
        """Stop sending new requests to an instance; in-flight ones finish."""
        state = self._state(instance_id)
        state.draining = True
        state.instance.is_available = False

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
        if self.recorder is not None:
            # Arrivals count from the start: every request arrives after it. (Counted from the
            # first request to finish, those that arrived before it were clipped to 0 and
            # lost their order and spacing in a replay.)
            self.recorder.set_epoch(self.now())
        await self.kv_events.start()
        self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="sage-cp-dispatch"))
        if self.elastic is not None:
            await self.elastic.start()
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
        if self.elastic is not None:
            await self.elastic.stop()
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
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)  # every record of this run on disk

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
        """Wait for a request to finish and return its result (no polling). Raises
        `RequestTimeoutError` when `timeout` seconds pass first (the request goes on)."""
        try:
            return await self.results.wait(request_id, timeout)
        except TimeoutError:
            raise RequestTimeoutError(
                f"request {request_id} did not finish within {timeout:g}s; it is still "
                "running: wait again, or cancel it"
            ) from None

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

    async def stream_batches(self, request: RequestMetadata) -> AsyncIterator[list[dict[str, Any]]]:
        """`stream`, yielding all the chunks that have arrived when the caller reads (at
        least one each time): for a relay that writes them to its client in one write."""
        item = self.admission.admit(request, streaming=True)
        async with aclosing(relay_chunk_batches(item, self.cancel)) as batches:
            async for batch in batches:
                yield batch

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
        whole = RequestMetadata(input=inputs, model_name=model_name, **fields)
        self.admission.charge(whole)  # one request against the rate limits, not one per part
        with charged_once():
            ids = [
                await self.submit_request(
                    RequestMetadata(input=part, model_name=model_name, **fields)
                )
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
        return self.results.status(
            request_id,
            self.dispatcher.instance_of,
            dispatching=self._running,
            now=self.now() if self._loop is not None else 0.0,
        )

    def serving_instance(self, request_id: str) -> str | None:
        """The instance running the request, or the one that answered it once it has
        finished (a fast stream can end before its first chunk reaches the client)."""
        running = self.dispatcher.instance_of(request_id)
        if running is not None:
            return running
        done = self.results.get(request_id)
        return done.instance_id if done is not None else None

    # -- policy / router at run time -------------------------------------------------------
    def update_policy(self, name: str, **options: Any) -> None:
        self.strategies.update_policy(name, **options)
        self.queue.rekey(self.strategies.queue_key)
        self._wake()

    def update_router(self, name: str, **options: Any) -> None:
        self.strategies.update_router(name, **options)
        self._wake()

    # -- metrics ---------------------------------------------------------------------------
    def get_metrics(self) -> PerformanceMetrics:
        now = self.now() if self._loop is not None else 0.0
        switches = getattr(self.scheduling_policy, "switches", [])
        cap = self.fleet.total_capacity()
        kv = [s.scraped.kv_usage for s in self.fleet if s.scraped.fresh]
        return self.metrics.snapshot(
            now,
            active=self.dispatcher.in_flight_count(),
            queued=len(self.queue),
            policy=self.scheduling_policy.describe(),
            policy_switches=len(switches),
            slot_occupancy=(self.fleet.total_in_flight() / cap) if cap else 0.0,
            kv_cache_usage=sum(kv) / len(kv) if kv else None,
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
