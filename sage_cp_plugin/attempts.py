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
from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.executor import ExecutionCoordinator, Outcome
from sage_cp_plugin.health import HealthMonitor
from sage_cp_plugin.metrics import MetricsCollector, slo_met
from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.results import ResultStore
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.cache_view import PrefixCacheView
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.strategies import Strategies
from sage_cp_plugin.types import (
    ExecutionInstanceType,
    RequestResult,
    RequestStatus,
    SchedulingDecision,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryRules:
    """When a failed attempt is tried again, and after how long."""

    max_attempts: int
    backoff_s: float  # first retry's backoff; doubles per attempt, with jitter
    request_timeout_s: float  # no retry once a request is this old


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
        clock: Callable[[], float],
        is_running: Callable[[], bool],
        wake: Callable[[], None],
        cache_view: PrefixCacheView,
        on_release: Callable[[QueuedRequest, str], None] | None = None,
    ) -> None:
        self.executor = executor
        self.cache_view = cache_view  # learns where each request went (prefix reuse)
        # Told when a request leaves an instance (the KV-event view stops counting its
        # prompt as being computed there).
        self.on_release = on_release
        self.strategies = strategies
        self.results = results
        self.health = health
        self.metrics = metrics
        self.queue = queue  # retries go back into it
        self.rules = rules
        self.clock = clock
        self.is_running = is_running
        self.wake = wake
        self._running: dict[str, tuple[asyncio.Task[None], InstanceState, QueuedRequest]] = {}
        self._rng = random.Random(0)

    def launch(self, item: QueuedRequest, state: InstanceState, now: float) -> None:
        st = self.strategies
        executor = self.executor
        decision = SchedulingDecision(
            request_id=item.request_id,
            target_instance_id=state.instance_id,
            estimated_latency_ms=state.predicted_service_s(item.input_tokens, item.output_tokens)
            * 1000,
            tensor_parallel_size=state.instance.tensor_parallel_size,
            pipeline_parallel_size=state.instance.pipeline_parallel_size,
            phase=item.phase,
            policy=st.scheduling_policy.describe(),
            router=st.routing_strategy,
        )
        sink = item.chunks.put_nowait if item.chunks is not None else None

        bookings = self._book(item, [state], now)

        async def attempt() -> tuple[Outcome, bool]:
            out = await executor.run(
                item.request, state.instance, sink=sink, on_first_token=self._first(bookings)
            )
            return out, True

        self._start(item, decision, now, [(state, st.router)], attempt, bookings)

    def launch_pd(
        self, item: QueuedRequest, prefill: InstanceState, decode: InstanceState, now: float
    ) -> None:
        st = self.strategies
        executor = self.executor
        decision = SchedulingDecision(
            request_id=item.request_id,
            target_instance_id=decode.instance_id,
            phase=ExecutionInstanceType.DECODING,
            policy=st.scheduling_policy.describe(),
            router=st.pd_config.decode_router,
            reason=f"disaggregated: prefill on {prefill.instance_id}, decode on {decode.instance_id}",
            metadata={"prefill_instance_id": prefill.instance_id},
        )
        sink = item.chunks.put_nowait if item.chunks is not None else None
        bookings = self._book(item, [prefill, decode], now)

        async def attempt() -> tuple[Outcome, bool]:
            try:
                out, split = await st.disaggregator.run(
                    executor, item, prefill, decode, sink, self._first(bookings)
                )
            except UpstreamError:
                item.no_split = True  # a retry runs whole, on any instance
                raise
            decision.metadata["prefill_used"] = split
            # The decode side skipped the prompt: its timings say nothing of prefill speed.
            return out, not split

        legs = [(prefill, st.prefill_router), (decode, st.decode_router)]
        self._start(item, decision, now, legs, attempt, bookings)

    def _book(
        self, item: QueuedRequest, states: list[InstanceState], now: float
    ) -> list[load_model.Booking]:
        """The request's load on each instance it occupies (uncached prefill, then KV), and
        what the prefix-cache view learns from where it went."""
        view = self.cache_view
        out = []
        for st in states:
            cached = view.cached_tokens(item, [st])[0]
            out.append(load_model.book(st, item.input_tokens, item.output_tokens, cached, now))
            view.on_dispatch(item, st.instance_id)
        return out

    def _first(self, bookings: list[load_model.Booking]) -> Callable[[], None]:
        def first_token() -> None:
            now = self.clock()
            for b in bookings:
                load_model.first_token(b, now)

        return first_token

    def _start(
        self,
        item: QueuedRequest,
        decision: SchedulingDecision,
        now: float,
        legs: list[tuple[InstanceState, Router]],
        attempt: Callable[[], Awaitable[tuple[Outcome, bool]]],
        bookings: list[load_model.Booking],
    ) -> None:
        """Occupy every instance of the attempt and run it as a task. The last leg is the
        instance that answers the caller."""
        item.attempts += 1
        for st, router in legs:
            st.in_flight += 1
            st.in_flight_tokens += item.input_tokens + item.output_tokens
            router.on_dispatch(item, st)
        task = asyncio.create_task(self._execute(item, decision, now, legs, attempt, bookings))
        self._running[item.request_id] = (task, legs[-1][0], item)

    async def _execute(
        self,
        item: QueuedRequest,
        decision: SchedulingDecision,
        dispatched: float,
        legs: list[tuple[InstanceState, Router]],
        attempt: Callable[[], Awaitable[tuple[Outcome, bool]]],
        bookings: list[load_model.Booking],
    ) -> None:
        """Whatever happens, the request ends (or is requeued once) and every instance it
        occupied is released."""
        results = self.results
        target = legs[-1][0]
        ok = False
        judged = True  # a cancelled attempt says nothing about the instance's health
        try:
            out, learn = await attempt()
            ok = True
            self._complete(item, target, decision, dispatched, out, learn=learn)
        except asyncio.CancelledError:
            judged = False
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
            # The instance answered a bad request correctly: not a sign of ill health.
            ok = exc.is_client_error
            self._on_error(item, target, exc)
        except Exception as exc:  # a bug must fail the request, never strand it
            logger.exception("request %s crashed", item.request_id)
            results.finish_failed(
                item,
                f"internal error: {type(exc).__name__}: {exc}",
                "internal",
                instance_id=target.instance_id,
            )
        finally:
            self._running.pop(item.request_id, None)
            released_at = self.clock()
            for b in bookings:
                load_model.release(b, released_at)
            for st, router in legs:
                st.in_flight -= 1
                st.in_flight_tokens -= item.input_tokens + item.output_tokens
                router.on_finish(item, st, ok)
                if self.on_release is not None:
                    self.on_release(item, st.instance_id)
            if judged:
                self.health.record_result(target, ok, self.clock())
            self.wake()

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
        self.metrics.retries += 1
        self.metrics.failovers += 1
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
            priority=req.priority,
            model_name=req.model_name,
        )
        t = result.timings
        t.queue_ms = (dispatched - item.arrival) * 1000
        t.e2e_ms = (out.finished_at - item.arrival) * 1000
        if out.first_token_at is not None:
            t.ttft_ms = (out.first_token_at - item.arrival) * 1000
            if out.completion_tokens > 1:
                t.tpot_ms = (t.e2e_ms - t.ttft_ms) / (out.completion_tokens - 1)
        met = slo_met(result, req.ttft_slo_ms, req.tpot_slo_ms, req.slo_deadline_ms)
        result.slo_met = met
        if learn:
            self._learn(state, item, out)
        state.completed += 1
        self.metrics.on_finish(result, met, out.finished_at)
        self.strategies.scheduling_policy.observe(item, state, met)
        self.results.store(item, result)

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
