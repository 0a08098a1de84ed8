"""Requests the coordinator knows by id: live ones (queued or running) and the results of
finished ones, kept for the last `retention` requests (and at most about `retention_bytes` of
them: embedding answers are large) so memory stays flat in long runs.

Every request ends here exactly once, through `store` (completed by an attempt) or
`finish_failed` (timed out, rejected, no instance, cancelled, failed upstream).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator

from sage_cp_plugin.embedding_parts import result_bytes
from sage_cp_plugin.metrics import MetricsCollector, slo_met
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.types import RequestResult, RequestStatus

logger = logging.getLogger(__name__)


class ResultStore:
    def __init__(
        self,
        *,
        retention: int,
        clock: Callable[[], float],
        metrics: MetricsCollector,
        retention_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.retention = retention
        self.retention_bytes = retention_bytes
        self._sizes: dict[str, int] = {}
        self.retained_bytes = 0
        self._clock = clock
        self._metrics = metrics
        self._results: OrderedDict[str, RequestResult] = OrderedDict()
        self._live: dict[str, QueuedRequest] = {}
        # Called once per finished request (the request log); must not block or raise.
        self.observers: list[Callable[[QueuedRequest, RequestResult], None]] = []

    # -- ids -------------------------------------------------------------------------------
    def in_use(self, request_id: str) -> bool:
        return request_id in self._live or request_id in self._results

    def track(self, item: QueuedRequest) -> None:
        """A request was admitted: it is live until it ends."""
        self._live[item.request_id] = item

    def live(self, request_id: str) -> QueuedRequest | None:
        return self._live.get(request_id)

    def get(self, request_id: str) -> RequestResult | None:
        return self._results.get(request_id)

    def forget(self, request_id: str) -> None:
        """Drop a finished result (its id may be run again); a live request stays."""
        if self._results.pop(request_id, None) is not None:
            self.retained_bytes -= self._sizes.pop(request_id, 0)

    def __len__(self) -> int:
        """Finished results retained."""
        return len(self._results)

    def __iter__(self) -> Iterator[RequestResult]:
        return iter(list(self._results.values()))

    # -- ending ----------------------------------------------------------------------------
    def store(self, item: QueuedRequest, result: RequestResult) -> None:
        """Record a finished request and wake whoever waits on it."""
        self._live.pop(item.request_id, None)
        self._results[item.request_id] = result
        for observe in self.observers:
            observe(item, result)
        self.retained_bytes -= self._sizes.get(item.request_id, 0)
        self._sizes[item.request_id] = size = result_bytes(result)
        self.retained_bytes += size
        while len(self._results) > self.retention or (
            self.retained_bytes > self.retention_bytes and len(self._results) > 1
        ):
            old, _ = self._results.popitem(last=False)
            self.retained_bytes -= self._sizes.pop(old, 0)
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
        now = self._clock()
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
            tags=req.tags,
            cost=item.cost,
        )
        result.timings.e2e_ms = (now - item.arrival) * 1000
        met = slo_met(result, req.ttft_slo_ms, req.tpot_slo_ms, req.slo_deadline_ms)
        result.slo_met = met
        self._metrics.on_finish(result, met, now)
        self.store(item, result)
        logger.info("request %s %s: %s", item.request_id, state.value, error)

    # -- waiting ---------------------------------------------------------------------------
    async def wait(self, request_id: str, timeout: float | None = None) -> RequestResult:
        """The request's result once it ends (no polling)."""
        done = self._results.get(request_id)
        if done is not None:
            return done
        result: RequestResult = await asyncio.wait_for(self.future(request_id), timeout)
        return result

    def future(self, request_id: str) -> asyncio.Future[RequestResult]:
        """A future of the request's result: cancelling it leaves the request alone (a
        waiter that gives up does not end the request, nor other waiters' wait). Awaited
        directly, it costs no task (the gateway's handlers race it against the client)."""
        item = self._live.get(request_id)
        if item is None or item.future is None:
            done = self._results.get(request_id)
            if done is None:
                raise KeyError(f"unknown request id {request_id!r}")
            fut: asyncio.Future[RequestResult] = asyncio.get_running_loop().create_future()
            fut.set_result(done)
            return fut
        return asyncio.shield(item.future)

    def status(
        self,
        request_id: str,
        running_on: Callable[[str], str | None],
        *,
        dispatching: bool,
        now: float,
    ) -> RequestResult:
        """The result when finished, else where it is (see `RequestStatus`): pending (not
        dispatchable yet), queued, scheduled (sent, no token yet) or running."""
        done = self._results.get(request_id)
        if done is not None:
            return done
        item = self._live.get(request_id)
        if item is None:
            raise KeyError(f"unknown request id {request_id!r}")
        running = running_on(request_id)
        if running is not None:
            state = RequestStatus.RUNNING if item.first_token_seen else RequestStatus.SCHEDULED
        elif not dispatching or item.not_before > now:
            state = RequestStatus.PENDING
        else:
            state = RequestStatus.QUEUED
        return RequestResult(
            request_id=request_id,
            state=state,
            instance_id=running,
            attempts=item.attempts,
            priority=item.request.priority,
            model_name=item.request.model_name,
            tags=item.request.tags,
            cost=item.cost,
        )
