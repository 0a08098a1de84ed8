"""The dispatcher: event-driven loop that moves requests from the queue onto instances,
and the per-request task that runs them, retries elsewhere and records the outcome.

Woken by an asyncio.Event (submit, finish, health change, retry timer); a round pops, per
pool, while the head request has an eligible instance with capacity. Cost per dispatched
request: O(log queue) for the heap and O(instances) for filtering and routing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.executor import Outcome
from sage_cp_plugin.metrics import slo_met
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import (
    ExecutionInstanceType,
    RequestResult,
    RequestStatus,
    SchedulingDecision,
)

if TYPE_CHECKING:
    from sage_cp_plugin.manager import ControlPlaneManager

logger = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, manager: ControlPlaneManager) -> None:
        self.m = manager
        self._event = asyncio.Event()
        self._running: dict[str, tuple[asyncio.Task[None], InstanceState]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._rng = random.Random(0)
        self._policy_seen: tuple[int, int] | None = None  # (id(policy), version) last keyed

    # -- waking ----------------------------------------------------------------------------
    def wake(self) -> None:
        self._event.set()

    def _wake_at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.wake()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            self.dispatch_round()

    # -- one round -------------------------------------------------------------------------
    def candidates(self, item: QueuedRequest) -> tuple[list[InstanceState], bool]:
        """Eligible instances with capacity, and whether any eligible one is routable."""
        routable = self.routable(item)
        pd = self.m.pd_router
        if pd is not None and item.phase is not None:
            routable = pd.filter_by_phase(
                [s for s in routable if s.has_capacity] or routable, item.phase
            )
        return [s for s in routable if s.has_capacity], bool(routable)

    def routable(self, item: QueuedRequest) -> list[InstanceState]:
        """Healthy instances that serve the request's model and kind (any capacity)."""
        m = self.m
        routable: list[InstanceState] = []
        excluded = item.excluded
        kept_excluded: list[InstanceState] = []
        for s in m.eligible(item.pool):
            # Inlined `InstanceState.routable`: this loop is the hot path of a decision.
            if not s.healthy or s.draining:
                continue
            if s.circuit_open and not m.health.maybe_half_open(s, m.fleet.now):
                continue
            if excluded and s.instance_id in excluded:
                kept_excluded.append(s)
                continue
            routable.append(s)
        # Retry elsewhere when possible; the excluded instances are the last resort.
        return routable or kept_excluded

    def _pd_pair(self, item: QueuedRequest) -> tuple[InstanceState, InstanceState] | str | None:
        """(prefill, decode) for a split request; "wait" when both pools exist but one is
        full; None when the request is not split (no PD pools, or the trigger says no)."""
        m = self.m
        routable = self.routable(item)
        pre = [s for s in routable if s.instance.instance_type is ExecutionInstanceType.PREFILLING]
        dec = [s for s in routable if s.instance.instance_type is ExecutionInstanceType.DECODING]
        if not pre or not dec:
            return None
        pre_free = [s for s in pre if s.has_capacity]
        dec_free = [s for s in dec if s.has_capacity]
        if not dec_free:
            return "wait"
        decode = m.decode_router.select(item, dec_free, m.fleet)
        if decode is None or not m.disaggregator.wants_split(item, decode):
            return None
        if not pre_free:
            return "wait"
        prefill = m.prefill_router.select(item, pre_free, m.fleet)
        return None if prefill is None else (prefill, decode)

    def dispatch_round(self) -> None:
        m = self.m
        if not m.running:
            return
        now = m.now()
        m.fleet.now = now
        policy = m.scheduling_policy
        policy.tick(m.fleet, len(m.queue), now)
        seen = (id(policy), policy.version)
        if self._policy_seen is not None and seen != self._policy_seen:
            m.queue.rekey(policy.key)  # the ordering changed (adaptive switch, update_policy)
        self._policy_seen = seen
        for pool in m.queue.pools():
            while True:
                item = m.queue.peek(pool)
                if item is None:
                    break
                if item.not_before > now:
                    self._wake_at(item.not_before)
                    break
                if now - item.arrival > m.request_timeout_s:
                    m.queue.pop(pool)
                    self._dequeued(item)
                    m.finish_failed(
                        item,
                        f"request timed out after {m.request_timeout_s:g}s without completing"
                        + (f" (last error: {item.last_error})" if item.last_error else ""),
                        "timeout",
                    )
                    continue
                if m.disaggregator.enabled and not item.pool[1] and not item.no_split:
                    pair = self._pd_pair(item)
                    if pair == "wait":
                        break
                    if isinstance(pair, tuple):
                        m.queue.pop(pool)
                        self._dequeued(item)
                        self._launch_pd(item, pair[0], pair[1], now)
                        continue
                cands, any_routable = self.candidates(item)
                if not any_routable:
                    m.queue.pop(pool)
                    self._dequeued(item)
                    why = self._no_instance_reason(item)
                    m.finish_failed(item, why, "no_instance")
                    continue
                if not cands:
                    break  # every eligible instance is busy: wait for a finish
                state = policy.select_instance(item, cands, m.router, m.fleet)
                if state is None:
                    break
                reject = policy.check_dispatch(item, state, now)
                m.queue.pop(pool)
                self._dequeued(item)
                if reject is not None:
                    m.finish_failed(item, reject, "rejected")
                    continue
                self._launch(item, state, now)

    def _dequeued(self, item: QueuedRequest) -> None:
        hook = getattr(self.m.scheduling_policy, "on_dequeue", None)
        if hook is not None:
            hook(item)

    def _no_instance_reason(self, item: QueuedRequest) -> str:
        m = self.m
        eligible = [s for s in m.fleet if m._eligible(s, item)]
        if not eligible:
            return (
                f"no instance serves model {item.request.model_name!r}; "
                f"models served: {', '.join(m.list_models()) or 'none'}"
            )
        states = ", ".join(
            f"{s.instance_id}({'draining' if s.draining else 'circuit open' if s.circuit_open else 'unhealthy'})"
            for s in eligible
        )
        extra = f"; last error: {item.last_error}" if item.last_error else ""
        return f"no healthy instance can serve the request: {states}{extra}"

    # -- running one request ---------------------------------------------------------------
    def _launch(self, item: QueuedRequest, state: InstanceState, now: float) -> None:
        m = self.m
        item.attempts += 1
        state.in_flight += 1
        state.in_flight_tokens += item.input_tokens + item.output_tokens
        m.router.on_dispatch(item, state)
        decision = SchedulingDecision(
            request_id=item.request_id,
            target_instance_id=state.instance_id,
            estimated_latency_ms=state.predicted_service_s(item.input_tokens, item.output_tokens)
            * 1000,
            tensor_parallel_size=state.instance.tensor_parallel_size,
            pipeline_parallel_size=state.instance.pipeline_parallel_size,
            phase=item.phase,
            policy=m.scheduling_policy.describe(),
            router=m.routing_strategy,
        )
        task = asyncio.create_task(self._execute(item, state, decision, now))
        self._running[item.request_id] = (task, state)

    def _launch_pd(
        self, item: QueuedRequest, prefill: InstanceState, decode: InstanceState, now: float
    ) -> None:
        m = self.m
        item.attempts += 1
        for st in (prefill, decode):
            st.in_flight += 1
        m.prefill_router.on_dispatch(item, prefill)
        m.decode_router.on_dispatch(item, decode)
        decision = SchedulingDecision(
            request_id=item.request_id,
            target_instance_id=decode.instance_id,
            phase=ExecutionInstanceType.DECODING,
            policy=m.scheduling_policy.describe(),
            router=m.pd_config.decode_router,
            reason=f"disaggregated: prefill on {prefill.instance_id}, decode on {decode.instance_id}",
            metadata={"prefill_instance_id": prefill.instance_id},
        )
        task = asyncio.create_task(self._execute_pd(item, prefill, decode, decision, now))
        self._running[item.request_id] = (task, decode)

    async def _execute_pd(
        self,
        item: QueuedRequest,
        prefill: InstanceState,
        decode: InstanceState,
        decision: SchedulingDecision,
        dispatched: float,
    ) -> None:
        m = self.m
        sink = item.chunks.put_nowait if item.chunks is not None else None
        ok = False
        try:
            out, split = await m.disaggregator.run(m.executor, item, prefill, decode, sink)
            ok = True
            decision.metadata["prefill_used"] = split
            self._complete(item, decode, decision, dispatched, out, learn=not split)
        except asyncio.CancelledError:
            reason = item.cancel_reason or "control plane stopped while running"
            m.finish_failed(
                item,
                reason,
                "cancelled",
                state=RequestStatus.CANCELLED,
                instance_id=decode.instance_id,
            )
            raise
        except UpstreamError as exc:
            ok = exc.is_client_error
            item.no_split = True  # a retry runs whole, on any instance
            self._on_error(item, decode, exc)
        except Exception as exc:  # a bug must fail the request, never strand it
            logger.exception("request %s crashed", item.request_id)
            m.finish_failed(
                item,
                f"internal error: {type(exc).__name__}: {exc}",
                "internal",
                instance_id=decode.instance_id,
            )
        finally:
            self._running.pop(item.request_id, None)
            for st, router in ((prefill, m.prefill_router), (decode, m.decode_router)):
                st.in_flight -= 1
                router.on_finish(item, st, ok)
            m.health.record_result(decode, ok, m.now())
            self.wake()

    async def _execute(
        self,
        item: QueuedRequest,
        state: InstanceState,
        decision: SchedulingDecision,
        dispatched: float,
    ) -> None:
        m = self.m
        sink = item.chunks.put_nowait if item.chunks is not None else None
        ok = False
        try:
            out = await m.executor.run(item.request, state.instance, sink=sink)
            ok = True
            self._complete(item, state, decision, dispatched, out)
        except asyncio.CancelledError:
            reason = item.cancel_reason or "control plane stopped while running"
            m.finish_failed(
                item,
                reason,
                "cancelled",
                state=RequestStatus.CANCELLED,
                instance_id=state.instance_id,
            )
            raise
        except UpstreamError as exc:
            # The instance answered a bad request correctly: not a sign of ill health.
            ok = exc.is_client_error
            self._on_error(item, state, exc)
        except Exception as exc:  # a bug must fail the request, never strand it
            logger.exception("request %s crashed", item.request_id)
            m.finish_failed(
                item,
                f"internal error: {type(exc).__name__}: {exc}",
                "internal",
                instance_id=state.instance_id,
            )
        finally:
            self._running.pop(item.request_id, None)
            state.in_flight -= 1
            state.in_flight_tokens -= item.input_tokens + item.output_tokens
            m.router.on_finish(item, state, ok)
            m.health.record_result(state, ok, m.now())
            self.wake()

    def _on_error(self, item: QueuedRequest, state: InstanceState, exc: UpstreamError) -> None:
        m = self.m
        if not exc.is_client_error:
            state.failed += 1
        item.last_error = str(exc)
        now = m.now()
        retry = (
            exc.retryable
            and not exc.body_started
            and item.attempts < m.max_attempts
            and now - item.arrival < m.request_timeout_s
            and m.running
        )
        if not retry:
            m.finish_failed(
                item,
                str(exc),
                "upstream",
                instance_id=state.instance_id,
                status_code=exc.status_code,
            )
            return
        item.excluded.add(state.instance_id)
        backoff = m.retry_backoff_s * (2 ** (item.attempts - 1))
        backoff = self._rng.uniform(0.5 * backoff, backoff)  # jitter: no synchronized retries
        if exc.retry_after_s is not None:
            backoff = max(backoff, exc.retry_after_s)
        item.not_before = now + backoff
        m.metrics.retries += 1
        m.metrics.failovers += 1
        logger.info(
            "request %s: retry %d in %.3fs after: %s", item.request_id, item.attempts, backoff, exc
        )
        m.queue.push(item)

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
        m = self.m
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
        m.metrics.on_finish(result, met, out.finished_at)
        m.scheduling_policy.observe(item, state, met)
        m.store_result(item, result)

    @staticmethod
    def _learn(state: InstanceState, item: QueuedRequest, out: Outcome) -> None:
        """Online per-instance speeds, from this request's own timings."""
        if out.first_token_at is None or not out.token_times:
            return
        prompt = out.prompt_tokens or item.input_tokens
        if prompt > 0:
            state.prefill_s_per_token.add((out.first_token_at - out.started_at) / prompt)
        if out.completion_tokens > 1:
            state.decode_s_per_token.add(
                (out.finished_at - out.first_token_at) / (out.completion_tokens - 1)
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
        item = self.m._live.get(request_id)
        if item is not None:
            item.cancel_reason = reason
        entry[0].cancel()
        return True

    async def cancel_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [t for t, _ in self._running.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {rid: s.instance_id for rid, (_, s) in self._running.items()}
