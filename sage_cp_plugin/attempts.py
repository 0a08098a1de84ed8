"""Running one attempt of a request on its instance(s), and what follows: completion with
timings and SLO outcome, or a retry elsewhere with backoff, or a failure with the reason.

Every attempt occupies its instances until it ends, however it ends; a request completes at
most once, and every request ends completed, failed or cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sage_cp_plugin import load_model
from sage_cp_plugin.attempt_outcome import Outcome
from sage_cp_plugin.concurrency_limit import ConcurrencyLimits
from sage_cp_plugin.cost import GpuTimeMeter, price
from sage_cp_plugin.embedding_parts import share_vectors
from sage_cp_plugin.errors import InvalidRequestBodyError, UpstreamError
from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.health import HealthMonitor
from sage_cp_plugin.log_once import OncePerKind
from sage_cp_plugin.metrics import MetricsCollector, slo_met
from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.preferences import layout_of
from sage_cp_plugin.results import ResultStore
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.cache_view import PrefixCacheView
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.strategies import Strategies
from sage_cp_plugin.tracing import spans as tracing
from sage_cp_plugin.types import (
    ExecutionInstanceType,
    RequestKind,
    RequestResult,
    RequestStatus,
    RequestTimings,
    SchedulingDecision,
)

logger = logging.getLogger(__name__)
_crashes = OncePerKind(logger)


@dataclass(frozen=True, slots=True)
class RetryRules:
    """When a failed attempt is tried again, and after how long."""

    max_attempts: int
    backoff_s: float  # first retry's backoff; doubles per attempt, with jitter
    request_timeout_s: float  # no retry once a request is this old


def _nothing() -> None:
    pass


class Attempts:
    """The attempts in flight, keyed by request id."""

    def __init__(
        self,
        *,
        executor: ExecutionCoordinator,
        strategies: Strategies,
        results: ResultStore,
        health: HealthMonitor,
        metrics: MetricsCollector,
        queue: PendingQueue,
        rules: RetryRules,
        limits: ConcurrencyLimits | None = None,
        clock: Callable[[], float],
        is_running: Callable[[], bool],
        wake: Callable[[], None],
        cache_view: PrefixCacheView | None = None,
        on_release: Callable[[QueuedRequest, str], None] | None = None,
    ) -> None:
        self.executor = executor
        self.cache_view = cache_view  # learns where each request went (prefix reuse)
        # Told when a request leaves an instance (the KV-event view stops counting its
        # prompt as being computed there).
        self.on_release = on_release
        # Told when a request's load on its instances changes after dispatch (its first
        # token ends its prefill; its end frees its slot): replicas sharing state publish it
        # then (`fleetshare`), instead of letting peers count finished work until a tick.
        self.on_load_change: Callable[[], None] = _nothing
        # Each running request's share of its instances' token load (load_model).
        self._bookings: dict[str, list[load_model.Booking]] = {}
        self.strategies = strategies
        self.results = results
        self.health = health
        self.metrics = metrics
        self.queue = queue  # retries go back into it
        self.rules = rules
        self.limits = limits  # adaptive per-instance limits, fed by each first token
        self.clock = clock
        self.is_running = is_running
        self.wake = wake
        self._running: dict[str, tuple[asyncio.Task[None], InstanceState, QueuedRequest]] = {}
        self.meter = GpuTimeMeter()
        self._rng = random.Random(0)

    def launch(self, item: QueuedRequest, state: InstanceState, now: float) -> None:
        st = self.strategies
        executor = self.executor
        service_s = state.predicted_service_s(item.input_tokens, item.output_tokens)
        estimate = state.price_for(
            item.input_tokens + item.output_tokens, service_s, item.request.billing_tier
        )
        decision = SchedulingDecision(
            request_id=item.request_id,
            target_instance_id=state.instance_id,
            estimated_latency_ms=service_s * 1000,
            estimated_cost=estimate or 0.0,
            parallelism_strategy=layout_of(state.instance),
            tensor_parallel_size=state.instance.tensor_parallel_size,
            pipeline_parallel_size=state.instance.pipeline_parallel_size,
            phase=item.phase,
            policy=st.policy_for(item).describe(),
            router=st.routing_strategy,
        )
        sink = item.chunks.put_nowait if item.chunks is not None else None

        def first_token() -> None:
            item.first_token_seen = True
            self._first_token(item)

        priority = st.policy_for(item).engine_priority(item)

        async def attempt() -> tuple[Outcome, bool]:
            out = await executor.run(
                item.request,
                state.instance,
                sink=sink,
                on_first_token=first_token,
                priority=priority,
            )
            return out, True

        self._start(item, decision, now, [(state, st.router)], attempt)

    def launch_pd(
        self, item: QueuedRequest, prefill: InstanceState, decode: InstanceState, now: float
    ) -> None:
        st = self.strategies
        executor = self.executor
        decision = SchedulingDecision(
            request_id=item.request_id,
            target_instance_id=decode.instance_id,
            phase=ExecutionInstanceType.DECODING,
            policy=st.policy_for(item).describe(),
            router=st.pd_config.decode_router,
            reason=f"disaggregated: prefill on {prefill.instance_id}, decode on {decode.instance_id}",
            metadata={"prefill_instance_id": prefill.instance_id},
        )
        sink = item.chunks.put_nowait if item.chunks is not None else None

        def first_token() -> None:
            item.first_token_seen = True
            self._first_token(item)

        priority = st.policy_for(item).engine_priority(item)

        def prefill_done() -> None:
            # The prefill leg's booking is the first: it teaches the load model the prefill
            # instance's speed and leaves that instance with the KV.
            bookings = self._bookings.get(item.request_id)
            if bookings:
                load_model.prefill_done(bookings[0], self.clock())

        async def attempt() -> tuple[Outcome, bool]:
            try:
                out, split = await st.disaggregator.run(
                    executor,
                    item,
                    prefill,
                    decode,
                    sink,
                    on_first_token=first_token,
                    priority=priority,
                    on_prefill_done=prefill_done,
                )
            except UpstreamError:
                item.no_split = True  # a retry runs whole, on any instance
                raise
            decision.metadata["prefill_used"] = split
            # The decode side skipped the prompt: its timings say nothing of prefill speed.
            return out, not split

        legs = [(prefill, st.prefill_router), (decode, st.decode_router)]
        self._start(item, decision, now, legs, attempt, split=True)

    def _start(
        self,
        item: QueuedRequest,
        decision: SchedulingDecision,
        now: float,
        legs: list[tuple[InstanceState, Router]],
        attempt: Callable[[], Awaitable[tuple[Outcome, bool]]],
        *,
        split: bool = False,
    ) -> None:
        """Occupy every instance of the attempt and run it as a task. The last leg is the
        instance that answers the caller; with `split` the first leg prefills for it."""
        item.attempts += 1
        item.first_token_seen = False
        if item.failed_on is not None and legs[-1][0].instance_id != item.failed_on:
            self.metrics.failovers += 1  # moved off the instance that failed it
        item.failed_on = None
        self._bookings[item.request_id] = self._book(item, [st for st, _ in legs], now, split)
        for st, router in legs:
            self.meter.mark(st.instance_id, st.in_flight, now)
            st.in_flight += 1
            st.in_flight_tokens += item.input_tokens + item.output_tokens
            router.on_dispatch(item, st)
        starts = [self.meter.mark(st.instance_id, st.in_flight, now) for st, _ in legs]
        # Traced: the task runs in the request's span context (None: the usual copy).
        task = asyncio.create_task(
            self._execute(item, decision, now, legs, starts, attempt),
            context=tracing.task_context(item),
        )
        self._running[item.request_id] = (task, legs[-1][0], item)

    async def _execute(
        self,
        item: QueuedRequest,
        decision: SchedulingDecision,
        dispatched: float,
        legs: list[tuple[InstanceState, Router]],
        starts: list[float],
        attempt: Callable[[], Awaitable[tuple[Outcome, bool]]],
    ) -> None:
        """Whatever happens, the request ends (or is requeued once) and every instance it
        occupied is released."""
        results = self.results
        target = legs[-1][0]
        ok = False
        judged = True  # a cancelled attempt says nothing about the instance's health
        out: Outcome | None = None
        try:
            async with asyncio.timeout_at(item.arrival + self.rules.request_timeout_s):
                out, learn = await attempt()
            ok = True
            self._charge(item, legs, starts, out)
            self._complete(item, target, decision, dispatched, out, learn=learn)
        except TimeoutError:
            judged = False  # the request's own deadline, not the instance's fault
            self._charge(item, legs, starts, out)
            results.finish_failed(
                item,
                f"request timed out after {self.rules.request_timeout_s:g}s without completing "
                f"(running on {target.instance_id})",
                "timeout",
                instance_id=target.instance_id,
            )
        except asyncio.CancelledError:
            judged = False
            self._charge(item, legs, starts, out)
            reason = item.cancel_reason or "control plane stopped while running"
            results.finish_failed(
                item,
                reason,
                "cancelled",
                state=RequestStatus.CANCELLED,
                instance_id=target.instance_id,
            )
            raise
        except UpstreamError as exc:
            # The instance answered a bad request correctly (4xx): that says nothing about
            # its health either way, so the circuit is neither tripped nor reset by it.
            ok = exc.is_client_error
            judged = not exc.is_client_error
            self._charge(item, legs, starts, out)
            self._on_error(item, target, exc)
        except InvalidRequestBodyError as exc:
            # Nothing reached the instance: the request could not even be encoded.
            judged = False
            self._charge(item, legs, starts, out)
            results.finish_failed(
                item, str(exc), "invalid_request", instance_id=target.instance_id, status_code=400
            )
        except Exception as exc:  # a bug must fail the request, never strand it
            # Only transport failures, timeouts and the engine's 5xx say anything about the
            # instance; a crash here is ours (or the request's), so health is not judged.
            judged = False
            _crashes.exception(exc, "request %s crashed", item.request_id)
            self._charge(item, legs, starts, out)
            results.finish_failed(
                item,
                f"internal error: {type(exc).__name__}: {exc}",
                "internal",
                instance_id=target.instance_id,
            )
        finally:
            self._running.pop(item.request_id, None)
            released_at = self.clock()
            for b in self._bookings.pop(item.request_id, ()):
                load_model.release(b, released_at)
            for st, router in legs:
                self.meter.mark(st.instance_id, st.in_flight, self.clock())
                st.in_flight -= 1
                st.in_flight_tokens -= item.input_tokens + item.output_tokens
                router.on_finish(item, st, ok)
                if self.on_release is not None:
                    self.on_release(item, st.instance_id)
            self.on_load_change()
            if judged:
                self.health.record_result(target, ok, self.clock())
            self.wake()

    def _charge(
        self,
        item: QueuedRequest,
        legs: list[tuple[InstanceState, Router]],
        starts: list[float],
        out: Outcome | None,
    ) -> None:
        """Add this attempt's cost to the request's: tokens it processed on token-priced
        instances (the prompt on a prefill leg), its GPU time share on hour-priced ones."""
        now = self.clock()
        tier = item.request.billing_tier
        answering = len(legs) - 1
        for i, ((st, _), start) in enumerate(zip(legs, starts, strict=True)):
            share_s = self.meter.mark(st.instance_id, st.in_flight, now) - start
            tokens = 0
            if out is not None:
                prompt = out.prompt_tokens or item.input_tokens
                tokens = prompt + out.completion_tokens if i == answering else prompt
            cost = price(st.instance, tokens=tokens, gpu_seconds=share_s, tier=tier)
            if cost is not None:
                item.cost = (item.cost or 0.0) + cost

    def _on_error(self, item: QueuedRequest, state: InstanceState, exc: UpstreamError) -> None:
        rules = self.rules
        if not exc.is_client_error:
            state.failed += 1
        item.last_error = str(exc)
        now = self.clock()
        retry = (
            exc.retryable
            and not exc.body_started
            and item.attempts < rules.max_attempts
            and now - item.arrival < rules.request_timeout_s
            and self.is_running()
        )
        if not retry:
            self.results.finish_failed(
                item,
                str(exc),
                "upstream",
                instance_id=state.instance_id,
                status_code=exc.status_code,
            )
            return
        item.excluded.add(state.instance_id)
        backoff = rules.backoff_s * (2 ** (item.attempts - 1))
        backoff = self._rng.uniform(0.5 * backoff, backoff)  # jitter: no synchronized retries
        if exc.retry_after_s is not None:
            backoff = max(backoff, exc.retry_after_s)
        item.not_before = now + backoff
        item.failed_on = state.instance_id
        self.metrics.retries += 1
        logger.info(
            "request %s: retry %d in %.3fs after: %s", item.request_id, item.attempts, backoff, exc
        )
        self.queue.push(item)

    def _complete(
        self,
        item: QueuedRequest,
        state: InstanceState,
        decision: SchedulingDecision,
        dispatched: float,
        out: Outcome,
        *,
        learn: bool = True,
    ) -> None:
        req = item.request
        # The timings built whole, then handed over: each assignment to a pydantic field is
        # validated (~2.5 us each, five of them per request before).
        e2e_ms = (out.finished_at - item.arrival) * 1000
        prefill_ms = ttft_ms = tpot_ms = None
        if out.first_token_at is not None and req.kind != RequestKind.EMBEDDING:
            prefill_ms = (out.first_token_at - dispatched) * 1000
            ttft_ms = (out.first_token_at - item.arrival) * 1000
            if out.completion_tokens > 1:
                tpot_ms = (e2e_ms - ttft_ms) / (out.completion_tokens - 1)
        timings = RequestTimings(
            queue_ms=(dispatched - item.arrival) * 1000,
            ttft_ms=ttft_ms,
            tpot_ms=tpot_ms,
            e2e_ms=e2e_ms,
            prefill_ms=prefill_ms,
        )
        result = RequestResult(
            request_id=item.request_id,
            state=RequestStatus.COMPLETED,
            output=out.text,
            response=out.response,
            embeddings=out.embeddings,
            instance_id=state.instance_id,
            decision=decision,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            attempts=item.attempts,
            timings=timings,
            priority=req.priority,
            model_name=req.model_name,
            tags=req.tags,
            cost=item.cost,
        )
        share_vectors(result)
        met = slo_met(result, req.ttft_slo_ms, req.tpot_slo_ms, req.slo_deadline_ms)
        result.slo_met = met
        if learn:
            self._learn(state, item, out)
            if self.limits is not None and out.first_token_at is not None:
                prompt = out.prompt_tokens or item.input_tokens
                self.limits.observe(state, out.first_token_at - out.started_at, prompt)
        state.completed += 1
        self.metrics.on_finish(result, met, out.finished_at)
        self.strategies.policy_for(item).observe(item, state, met)
        self.results.store(item, result)

    def _book(
        self, item: QueuedRequest, states: list[InstanceState], now: float, split: bool = False
    ) -> list[load_model.Booking]:
        """The request's load on each instance it occupies (uncached prefill, then KV), and
        what the prefix-cache view learns from where it went. The decode leg of a split
        prefills nothing (its KV arrives from the prefill leg; if that fails and it runs
        whole, the booking underestimates its prefill until its first token) and learns no
        prefill speed from a first token that waited for another instance."""
        view = self.cache_view
        out = []
        slo_ms = item.request.ttft_slo_ms
        due = None if slo_ms is None or item.demoted else item.arrival + slo_ms / 1000.0
        for i, st in enumerate(states):
            pulled = split and i == len(states) - 1
            cached = view.cached_tokens(item, [st])[0] if view is not None else 0
            if pulled:
                cached = item.input_tokens
            out.append(
                load_model.book(
                    st,
                    item.input_tokens,
                    item.output_tokens,
                    cached,
                    now,
                    learns=not pulled,
                    first_token_due=due,
                )
            )
            if view is not None:
                view.on_dispatch(item, st.instance_id)
        return out

    def _first_token(self, item: QueuedRequest) -> None:
        now = self.clock()
        for b in self._bookings.get(item.request_id, ()):
            load_model.first_token(b, now)
        self.on_load_change()
        if self.limits is not None:
            self.wake()  # its prefill left the queue: a request held by `prefill_fits` may go

    @staticmethod
    def _learn(state: InstanceState, item: QueuedRequest, out: Outcome) -> None:
        """Decode step time from this request's TPOT (prefill speed is learnt at its first
        token, against the work that was queued ahead of it: `load_model.first_token`)."""
        if out.first_token_at is None or not out.token_times:
            return
        if out.completion_tokens > 1:
            load_model.observe_decode(
                state, (out.finished_at - out.first_token_at) / (out.completion_tokens - 1)
            )

    # -- bookkeeping -----------------------------------------------------------------------
    def in_flight_count(self) -> int:
        return len(self._running)

    def instance_of(self, request_id: str) -> str | None:
        entry = self._running.get(request_id)
        return entry[1].instance_id if entry else None

    def cancel(self, request_id: str, reason: str) -> bool:
        entry = self._running.get(request_id)
        if entry is None:
            return False
        task, _, item = entry
        item.cancel_reason = reason
        task.cancel()
        return True

    async def cancel_all(self) -> None:
        tasks = [t for t, _, _ in self._running.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def describe(self) -> dict[str, str]:
        return {rid: s.instance_id for rid, (_, s, _) in self._running.items()}
