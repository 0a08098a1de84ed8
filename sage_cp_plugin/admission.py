"""Admission: a validated `RequestMetadata` becomes a `QueuedRequest` in the pending queue,
or is refused at once with an error that says why (id in use, model not served, queue full).

What decisions need later is computed here once: token estimates, the best-case service
time over its pool, whether it is urgent, its prefill/decode phase, and the policy's key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from sage_cp_plugin.errors import (
    ModelNotServedError,
    QueueFullError,
    RequestIdInUseError,
    RequestRejectedError,
)
from sage_cp_plugin.metrics import MetricsCollector
from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.policies.base import make_item
from sage_cp_plugin.pools import InstancePools
from sage_cp_plugin.quotas import QuotaLedger
from sage_cp_plugin.rate_limits import RateLimiter, already_charged, counted_tokens
from sage_cp_plugin.results import ResultStore
from sage_cp_plugin.routing.cache_view import prepare as prepare_for_cache
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.strategies import Strategies
from sage_cp_plugin.tracing import spans as tracing
from sage_cp_plugin.types import RequestKind, RequestMetadata, RequestPriority


class Admission:
    def __init__(
        self,
        *,
        queue: PendingQueue,
        pools: InstancePools,
        results: ResultStore,
        strategies: Strategies,
        metrics: MetricsCollector,
        clock: Callable[[], float],
        wake: Callable[[], None],
        urgent_ttft_ms: float,
        tokenize: Callable[[QueuedRequest, Sequence[InstanceState]], None] | None = None,
        rate_limiter: RateLimiter | None = None,
        quotas: QuotaLedger | None = None,
    ) -> None:
        self.queue = queue
        # Token ids for the KV-event index (`KVEventTracker.tokenize`): computed here, once
        # per request, never inside a routing decision.
        self.tokenize = tokenize
        self.pools = pools
        self.results = results
        self.strategies = strategies
        self.metrics = metrics
        self.clock = clock
        self.wake = wake
        # Requests with priority HIGH or above, or a TTFT objective at most this tight, may
        # use the pools' urgent headroom (when there is any).
        self.urgent_ttft_ms = urgent_ttft_ms
        self._seq = 0
        self.rate_limiter = rate_limiter
        self.quotas = quotas

    def admit(self, request: RequestMetadata, *, streaming: bool = False) -> QueuedRequest:
        if not isinstance(request, RequestMetadata):
            raise TypeError(f"submit_request expects RequestMetadata, got {type(request).__name__}")
        rid = request.request_id
        if self.results.in_use(rid):
            raise RequestIdInUseError(
                f"request_id {rid!r} is already in use; leave it empty to have one generated"
            )
        self.check_model(request)
        self.check_preferences(request)
        if self.queue.full():
            # Tell the client when a slot is likely free: the queue drains at the recent
            # completion rate (1 s when unknown, at most a minute).
            rate = self.metrics.drain_rate(self.clock())
            wait = len(self.queue) / rate if rate > 0 else 1.0
            raise QueueFullError(self.queue.capacity, retry_after_s=min(60.0, max(1.0, wait)))
        now = self.clock()
        item = make_item(request, now=now, seq=self._seq + 1)
        if not already_charged():
            self._charge(request, item, now)
        self._seq += 1
        item.future = asyncio.get_running_loop().create_future()
        if streaming:
            item.chunks = asyncio.Queue()
        # Best-case service time over the pool; in large fleets over a rotating sample of 16,
        # so admission stays O(1) in fleet size (it was a visible cost at 256 instances).
        serving = self.pools.eligible(item.pool)
        if self.tokenize is not None:
            self.tokenize(item, serving)
        # The prefix view's prompt hashes, once per request, outside every decision.
        prepare_for_cache(self.pools.fleet.cache_view, item)
        if len(serving) > 16:
            start = item.seq % len(serving)
            serving = (serving + serving)[start : start + 16]
        item.predicted_s = min(
            (s.predicted_service_s(item.input_tokens, item.output_tokens) for s in serving),
            default=0.0,
        )
        item.urgent = self.pools.urgent_headroom > 0 and (
            request.priority <= RequestPriority.HIGH
            or (request.ttft_slo_ms is not None and request.ttft_slo_ms <= self.urgent_ttft_ms)
        )
        limits = self.pools.limits
        if limits is not None and limits.reserve is not None and request.ttft_slo_ms is not None:
            limits.reserve.note(request.ttft_slo_ms / 1000.0, item.input_tokens, now)
        strategies = self.strategies
        if strategies.pd_router is not None and request.kind != RequestKind.EMBEDDING:
            item.phase = strategies.pd_router.determine_request_phase(request)
        fleet = self.pools.fleet
        fleet.now = now
        item.replica = fleet.replica
        item.lane = strategies.lane_of(request)
        policy = strategies.policy_for(item)
        policy.admit(item, fleet)
        item.key = policy.key(item)
        tracing.on_admit(item)  # no-op unless tracing is on
        self.queue.push(item)
        self.results.track(item)
        self.metrics.on_submit(now)
        self.wake()
        return item

    def charge(self, request: RequestMetadata) -> None:
        """Charge a request that will be admitted in parts (`rate_limits.charged_once`)
        against the rate limits once, whole; raises as `admit` would."""
        if self.rate_limiter is None and self.quotas is None:
            return
        self.check_model(request)
        now = self.clock()
        self._charge(request, make_item(request, now=now, seq=0), now)

    def _charge(self, request: RequestMetadata, item: QueuedRequest, now: float) -> None:
        """The tenant's quota, then its rate limits (which count the request). Here, once
        the request is known to be servable: a refused or invalid request uses neither."""
        if self.quotas is not None:
            self.quotas.check(request.user_id)
        if self.rate_limiter is not None:
            self.rate_limiter.admit(request.user_id, counted_tokens(item), now)

    def check_model(self, request: RequestMetadata) -> None:
        embedding = request.kind == RequestKind.EMBEDDING
        if self.pools.eligible((request.model_name, embedding)):
            return
        if request.model_name is None:
            if self.pools.fleet.states:
                kind = "embedding" if embedding else "generation"
                raise ModelNotServedError(f"<any {kind} model>", self.pools.list_models())
            return  # no instances yet: the request waits for the dispatcher's verdict
        raise ModelNotServedError(request.model_name, self.pools.list_models())

    def check_preferences(self, request: RequestMetadata) -> None:
        """A preferred instance must exist and serve the request; a billing tier other than
        "standard" must have a price on some instance that serves it."""
        pool = self.pools.eligible((request.model_name, request.kind == RequestKind.EMBEDDING))
        wanted = request.preferred_instance_id
        if wanted is not None and all(s.instance_id != wanted for s in pool):
            fleet = self.pools.fleet
            if wanted not in fleet.states:
                raise RequestRejectedError(
                    f"preferred_instance_id {wanted!r} is not registered; "
                    f"registered: {sorted(fleet.states)}"
                )
            raise RequestRejectedError(
                f"preferred_instance_id {wanted!r} does not serve this request "
                f"(model {request.model_name!r}, kind {request.request_kind.value}); "
                f"instances that do: {sorted(s.instance_id for s in pool)}"
            )
        tier = request.billing_tier
        if tier != "standard" and pool and all(tier not in s.instance.prices_by_tier for s in pool):
            priced = sorted({t for s in pool for t in s.instance.prices_by_tier})
            raise RequestRejectedError(
                f"billing_tier {tier!r} has no price on any instance serving this request; "
                f"tiers priced: {priced or 'none'} (or use 'standard')"
            )
