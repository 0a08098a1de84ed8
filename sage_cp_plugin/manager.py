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
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from sage_cp_plugin.disaggregation import Disaggregator
from sage_cp_plugin.dispatch import Dispatcher
from sage_cp_plugin.errors import (
    ConfigurationError,
    DuplicateInstanceError,
    ModelNotServedError,
    QueueFullError,
)
from sage_cp_plugin.executor import ExecutionCoordinator, TransportFactory
from sage_cp_plugin.health import HealthConfig, HealthMonitor
from sage_cp_plugin.kvevents.tracker import KVEventTracker
from sage_cp_plugin.kvevents.view import EventsOrApproximateView
from sage_cp_plugin.metrics import MetricsCollector
from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.plugins import get_registry
from sage_cp_plugin.policies.base import SchedulingPolicy, make_item
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
from sage_cp_plugin.routing.pd import PDRoutingStrategy
from sage_cp_plugin.scrape import MetricsScraper, ScrapeConfig
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import (
    ExecutionInstance,
    PDSeparationConfig,
    PerformanceMetrics,
    RequestKind,
    RequestMetadata,
    RequestPriority,
    RequestResult,
    RequestStatus,
)

logger = logging.getLogger(__name__)


class ControlPlaneManager:
    """The coordinator. Construct, `register_instance(...)`, `await start()`, submit."""

    def __init__(
        self,
        scheduling_policy: str = "adaptive",
        routing_strategy: str = "load_balanced",
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
        registry = get_registry()
        self.policy_name = scheduling_policy
        self.routing_strategy = routing_strategy
        self.scheduling_policy: SchedulingPolicy = registry.create(
            "policy", scheduling_policy, **(policy_options or {})
        )
        self.router: Router = registry.create("router", routing_strategy, **(router_options or {}))
        self.enable_pd_separation = enable_pd_separation
        self.enable_monitoring = enable_monitoring
        self.pd_config = pd_config or PDSeparationConfig(enabled=enable_pd_separation)
        self.pd_router: PDRoutingStrategy | None = (
            PDRoutingStrategy(self.pd_config)
            if enable_pd_separation and self.pd_config.enabled
            else None
        )
        self.executor = executor or ExecutionCoordinator(
            transport_factory=transport_factory, upstream_streaming=upstream_streaming
        )
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.request_timeout_s = request_timeout_s
        # What each engine's prefix cache holds; routers read it through the fleet snapshot:
        # exact from vLLM's KV-cache events for instances that publish them (`kv_events`),
        # approximate (what we sent where) for the others.
        self.kv_events = KVEventTracker()
        self.cache_view = EventsOrApproximateView(self.kv_events.view, ApproximatePrefixCache())
        self.fleet = FleetSnapshot(cache_view=self.cache_view)
        self.queue = PendingQueue(max_pending_requests)
        self.metrics = MetricsCollector()
        self.health = HealthMonitor(
            health or HealthConfig(), self.executor.health_check, self._wake
        )
        self.scraper = MetricsScraper(self.executor, scrape or ScrapeConfig())
        self.disaggregator = Disaggregator(self.pd_config)
        self.prefill_router: Router = registry.create("router", self.pd_config.prefill_router)
        self.decode_router: Router = registry.create("router", self.pd_config.decode_router)
        if embedding_batch_size <= 0:
            raise ConfigurationError(
                f"embedding_batch_size must be positive, got {embedding_batch_size}"
            )
        self.embedding_batch_size = embedding_batch_size
        # Slots beyond max_concurrent_requests (a fraction of it) that only urgent requests
        # (priority HIGH or above, or a TTFT objective <= urgent_ttft_ms) may use: interactive
        # work then never waits behind a full instance for a free slot.
        if urgent_headroom < 0:
            raise ConfigurationError(f"urgent_headroom must be >= 0, got {urgent_headroom}")
        self.urgent_headroom = urgent_headroom
        self.urgent_ttft_ms = urgent_ttft_ms
        self.dispatcher = Dispatcher(self)
        self._results: OrderedDict[str, RequestResult] = OrderedDict()
        self._result_retention = result_retention
        self._live: dict[str, QueuedRequest] = {}  # queued or running
        self._seq = 0
        self._pools: dict[tuple[str | None, bool], list[InstanceState]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._pools.clear()
        self.executor.register_instance(instance)
        logger.info("registered instance %s at %s", instance.instance_id, instance.base_url)
        self._wake()

    async def unregister_instance(self, instance_id: str) -> None:
        state = self.fleet.states.pop(instance_id, None)
        if state is None:
            raise KeyError(f"unknown instance {instance_id!r}")
        self._pools.clear()
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
            self.finish_failed(item, "control plane stopped before the request ran", "stopped")
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
        item = self._admit(request)
        return item.request_id

    def _admit(self, request: RequestMetadata, *, streaming: bool = False) -> QueuedRequest:
        if not isinstance(request, RequestMetadata):
            raise TypeError(f"submit_request expects RequestMetadata, got {type(request).__name__}")
        rid = request.request_id
        if rid in self._live or rid in self._results:
            raise ConfigurationError(
                f"request_id {rid!r} is already in use; leave it empty to have one generated"
            )
        self._check_model(request)
        if self.queue.full():
            # Tell the client when a slot is likely free: the queue drains at the recent
            # completion rate (1 s when unknown, at most a minute).
            rate = self.metrics.drain_rate(self.now())
            wait = len(self.queue) / rate if rate > 0 else 1.0
            raise QueueFullError(self.queue.capacity, retry_after_s=min(60.0, max(1.0, wait)))
        now = self.now()
        self._seq += 1
        item = make_item(request, now=now, seq=self._seq)
        item.future = asyncio.get_running_loop().create_future()
        if streaming:
            item.chunks = asyncio.Queue()
        # Best-case service time over the pool; in large fleets over a rotating sample of 16,
        # so admission stays O(1) in fleet size (it was a visible cost at 256 instances).
        serving = self.eligible(item.pool)
        if self.kv_events.enabled:
            # Token ids for the KV-event index, here and not inside a routing decision.
            self.kv_events.tokenize(item, serving)
        if len(serving) > 16:
            start = item.seq % len(serving)
            serving = (serving + serving)[start : start + 16]
        item.predicted_s = min(
            (s.predicted_service_s(item.input_tokens, item.output_tokens) for s in serving),
            default=0.0,
        )
        item.urgent = self.urgent_headroom > 0 and (
            request.priority <= RequestPriority.HIGH
            or (request.ttft_slo_ms is not None and request.ttft_slo_ms <= self.urgent_ttft_ms)
        )
        if self.pd_router is not None and request.kind != RequestKind.EMBEDDING:
            item.phase = self.pd_router.determine_request_phase(request)
        self.fleet.now = now
        self.scheduling_policy.admit(item, self.fleet)
        item.key = self.scheduling_policy.key(item)
        self.queue.push(item)
        self._live[rid] = item
        self.metrics.on_submit(now)
        self._wake()
        return item

    def _check_model(self, request: RequestMetadata) -> None:
        embedding = request.kind == RequestKind.EMBEDDING
        if self.eligible((request.model_name, embedding)):
            return
        if request.model_name is None:
            if self.fleet.states:
                kind = "embedding" if embedding else "generation"
                raise ModelNotServedError(f"<any {kind} model>", self.list_models())
            return  # no instances yet: the request waits for the dispatcher's verdict
        raise ModelNotServedError(request.model_name, self.list_models())

    def eligible(self, pool: tuple[str | None, bool]) -> list[InstanceState]:
        """Instances that serve a pool (model, embedding?), whatever their health; cached
        until the fleet's membership changes, so a decision does not rescan the fleet."""
        cached = self._pools.get(pool)
        if cached is None:
            model, embedding = pool
            cached = [
                s
                for s in self.fleet.states.values()
                if s.instance.is_embedding == embedding and s.instance.serves(model)
            ]
            self._pools[pool] = cached
        return cached

    def has_room(self, s: InstanceState, item: QueuedRequest) -> bool:
        """Whether `s` can take `item` now: its cap, plus the urgent headroom for urgent work."""
        cap = s.instance.max_concurrent_requests
        if item.urgent:
            cap += max(1, int(cap * self.urgent_headroom))
        return s.in_flight < cap

    async def wait(self, request_id: str, timeout: float | None = None) -> RequestResult:
        """Wait for a request to finish and return its result (no polling)."""
        if request_id in self._results:
            return self._results[request_id]
        item = self._live.get(request_id)
        if item is None or item.future is None:
            raise KeyError(f"unknown request id {request_id!r}")
        result: RequestResult = await asyncio.wait_for(asyncio.shield(item.future), timeout)
        return result

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
        item = self._admit(request, streaming=True)
        assert item.chunks is not None and item.future is not None
        try:
            while True:
                chunk = await item.chunks.get()
                if chunk is None:
                    break
                yield chunk
            result: RequestResult = await item.future
            if result.state != RequestStatus.COMPLETED:
                from sage_cp_plugin.errors import UpstreamError

                raise UpstreamError(result.error or "request failed")
        finally:
            if not item.future.done():
                self.cancel(item.request_id, "the caller stopped reading the stream")

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
        from sage_cp_plugin.errors import UpstreamError

        items = [inputs] if isinstance(inputs, str) else list(inputs)
        if not items:
            raise ValueError("inputs must hold at least one text")
        size = batch_size or self.embedding_batch_size
        if size <= 0:
            raise ValueError(f"batch_size must be positive, got {size}")
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        ids = [
            await self.submit_request(RequestMetadata(input=part, model_name=model_name, **fields))
            for part in parts
        ]
        results = await asyncio.gather(*(self.wait(i) for i in ids))
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for res in results:
            if res.state != RequestStatus.COMPLETED or res.embeddings is None:
                raise UpstreamError(f"embedding part {res.request_id} failed: {res.error}")
            for vec in res.embeddings:
                data.append({"object": "embedding", "index": len(data), "embedding": vec})
            prompt_tokens += res.prompt_tokens
        model = model_name or (results[0].response or {}).get("model", "")
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            "parts": [{"request_id": r.request_id, "instance_id": r.instance_id} for r in results],
        }

    def cancel(self, request_id: str, reason: str = "cancelled by caller") -> bool:
        item = self._live.get(request_id)
        if item is None:
            return False
        if self.queue.remove(request_id) is not None:
            self.finish_failed(item, reason, "cancelled", state=RequestStatus.CANCELLED)
            return True
        return self.dispatcher.cancel(request_id, reason)

    # -- results ---------------------------------------------------------------------------
    def store_result(self, item: QueuedRequest, result: RequestResult) -> None:
        self._live.pop(item.request_id, None)
        self._results[item.request_id] = result
        while len(self._results) > self._result_retention:
            self._results.popitem(last=False)
        if item.future is not None and not item.future.done():
            item.future.set_result(result)
        if item.chunks is not None:
            item.chunks.put_nowait(None)

    def finish_failed(
        self,
        item: QueuedRequest,
        error: str,
        error_type: str,
        *,
        state: RequestStatus = RequestStatus.FAILED,
        instance_id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        from sage_cp_plugin.metrics import slo_met

        now = self.now()
        req = item.request
        result = RequestResult(
            request_id=item.request_id,
            state=state,
            error=error,
            error_type=error_type,
            status_code=status_code,
            instance_id=instance_id,
            attempts=item.attempts,
            priority=req.priority,
            model_name=req.model_name,
        )
        result.timings.e2e_ms = (now - item.arrival) * 1000
        met = slo_met(result, req.ttft_slo_ms, req.tpot_slo_ms, req.slo_deadline_ms)
        result.slo_met = met
        self.metrics.on_finish(result, met, now)
        self.store_result(item, result)
        logger.info("request %s %s: %s", item.request_id, state.value, error)

    async def get_request_status(self, request_id: str) -> RequestResult:
        done = self._results.get(request_id)
        if done is not None:
            return done
        item = self._live.get(request_id)
        if item is None:
            raise KeyError(f"unknown request id {request_id!r}")
        running = self.dispatcher.instance_of(request_id)
        return RequestResult(
            request_id=request_id,
            state=RequestStatus.RUNNING if running else RequestStatus.PENDING,
            instance_id=running,
            attempts=item.attempts,
            priority=item.request.priority,
            model_name=item.request.model_name,
        )

    # -- policy / router at run time -------------------------------------------------------
    def update_policy(self, name: str, **options: Any) -> None:
        self.scheduling_policy = get_registry().create("policy", name, **options)
        self.policy_name = name
        self.queue.rekey(self.scheduling_policy.key)
        self._wake()

    def update_router(self, name: str, **options: Any) -> None:
        self.router = get_registry().create("router", name, **options)
        self.routing_strategy = name
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
        return {
            "running": self._running,
            "scheduling_policy": self.scheduling_policy.describe(),
            "routing_strategy": self.routing_strategy,
            "pending_requests": len(self.queue),
            "running_requests": self.dispatcher.in_flight_count(),
            "instances": {
                s.instance_id: {
                    "url": s.instance.base_url,
                    "type": s.instance.instance_type.value,
                    "models": s.instance.served_models,
                    "healthy": s.healthy,
                    "circuit_open": s.circuit_open,
                    "draining": s.draining,
                    "in_flight": s.in_flight,
                    "capacity": s.capacity,
                    "kv_cache": self.kv_events.status(s.instance_id),
                }
                for s in self.fleet
            },
        }
