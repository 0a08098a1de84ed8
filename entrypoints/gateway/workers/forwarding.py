"""The scheduling process's side of `--workers N`: attempts run in the worker that owns the
request, everything else stays here.

The coordinator (admission, the one pending queue, dispatch, policy and router, health,
circuits, retries, results, metrics) is the ordinary `ControlPlaneManager`. Only its
executor differs: `ForwardingExecutor.run` sends "run this request on that instance" to the
worker whose client sent the request and returns the worker's `Outcome` (or raises its
`UpstreamError`), so the HTTP work in and out (about 90 % of a request's CPU in the profile,
docs/scale-out.md) is spread over the workers while every decision is taken once, here.
A request with no owning worker (one proxied here whole, e.g. embeddings) runs locally.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sage_cp_plugin.attempt_outcome import ChunkSink, Outcome
from sage_cp_plugin.errors import InvalidRequestBodyError, UpstreamError
from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.fleetshare.claims import ClaimOutcome, Run
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.tracing import spans as tracing
from sage_cp_plugin.types import (
    ExecutionInstance,
    RequestKind,
    RequestMetadata,
    RequestResult,
    RequestStatus,
)

from ..errors import exception_to_error
from ..runtime import Gateway
from .wire import Channel

logger = logging.getLogger(__name__)
ENDPOINTS = {RequestKind.COMPLETION: "/v1/completions", RequestKind.CHAT: "/v1/chat/completions"}


@dataclass(slots=True)
class _Owner:
    session: WorkerSession
    token: int


@dataclass(slots=True)
class _Run:
    number: int
    future: asyncio.Future[Outcome]
    on_first_token: Callable[[], None] | None


class ForwardingExecutor(ExecutionCoordinator):
    """An `ExecutionCoordinator` whose attempts run in the owning worker. Probes and
    `/metrics` scrapes stay here (they are the fleet view)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.owners: dict[str, _Owner] = {}

    async def run(
        self,
        request: RequestMetadata,
        instance: ExecutionInstance,
        *,
        sink: ChunkSink | None = None,
        extra: dict[str, Any] | None = None,
        stream: bool | None = None,
        on_first_token: Callable[[], None] | None = None,
        priority: int | None = None,
    ) -> Outcome:
        owner = self.owners.get(request.request_id)
        if owner is None:
            return await super().run(
                request, instance, sink=sink, extra=extra, stream=stream,
                on_first_token=on_first_token, priority=priority,
            )  # fmt: skip
        # `sink` is the coordinator's streaming hook: the worker relays to its own client
        # instead, so only "relay or not" travels (a PD prefill leg has no sink: not relayed).
        return await owner.session.run(
            owner.token, instance, sink is not None, extra, stream, on_first_token, priority
        )


def outcome_fields(out: Outcome, now: float) -> tuple[Any, ...]:
    """An `Outcome` for the wire, its timestamps as ages at `now` (clocks of two processes
    are not comparable; ages are)."""
    first = None if out.first_token_at is None else now - out.first_token_at
    return (out.response, out.text, out.embeddings, out.prompt_tokens, out.completion_tokens,
            now - out.started_at, first, now - out.finished_at, len(out.token_times),
            out.kv_transfer_params, out.relayed)  # fmt: skip


def outcome_from(fields: tuple[Any, ...], now: float) -> Outcome:
    (response, text, embeddings, prompt, completion, started, first, finished, tokens, kv,
     relayed) = fields  # fmt: skip
    first_at = None if first is None else now - first
    return Outcome(
        response=response, text=text, embeddings=embeddings, prompt_tokens=prompt,
        completion_tokens=completion, started_at=now - started, first_token_at=first_at,
        finished_at=now - finished,
        # The coordinator reads only whether tokens came (attempts._learn); not each time.
        token_times=[first_at] * min(tokens, 1) if first_at is not None else [],
        kv_transfer_params=kv, relayed=relayed,
    )  # fmt: skip


def error_fields(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, UpstreamError):
        return ("upstream", str(exc), exc.status_code, exc.instance_id, exc.retryable,
                exc.retry_after_s, exc.body_started)  # fmt: skip
    if isinstance(exc, InvalidRequestBodyError):
        return ("invalid", str(exc))
    return ("crash", f"{type(exc).__name__}: {exc}")


def error_from(fields: tuple[Any, ...]) -> Exception:
    kind = fields[0]
    if kind == "upstream":
        _, msg, status, instance_id, retryable, retry_after, started = fields
        return UpstreamError(
            msg, status_code=status, instance_id=instance_id, retryable=retryable,
            retry_after_s=retry_after, body_started=started,
        )  # fmt: skip
    if kind == "invalid":
        return InvalidRequestBodyError(fields[1])
    return RuntimeError(f"in the worker: {fields[1]}")


class WorkerSession:
    """One worker's connection: its requests, their attempts, their results."""

    def __init__(self, channel: Channel, gateway: Gateway, executor: ForwardingExecutor) -> None:
        self.channel = channel
        self.gateway = gateway
        self.executor = executor
        self.index = -1  # set by the worker's hello
        self.pid = 0
        self.requests_answered = 0  # spread of the load over the workers (/metrics)
        self._requests: dict[int, str] = {}  # token -> request id
        self._runs: dict[int, _Run] = {}
        self._sent: dict[str, ExecutionInstance] = {}  # instances this worker holds
        self._run_numbers = 0
        self._joins: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    # -- from the worker ----------------------------------------------------------------
    async def serve(self, on_hello: Callable[[WorkerSession], None]) -> None:
        receive = self.channel.receive
        try:
            while (batch := await receive()) is not None:
                for msg in batch:
                    self._handle(msg, on_hello)
        finally:
            self._lost()

    def _handle(self, msg: tuple[Any, ...], on_hello: Callable[[WorkerSession], None]) -> None:
        op = msg[0]
        if op == "submit":
            self._submit(msg[1], msg[2], msg[3], msg[4])
        elif op == "first":
            run = self._runs.get(msg[1])
            if run is not None and run.on_first_token is not None:
                run.on_first_token()
        elif op == "outcome" or op == "failed":
            self._finish_run(msg[1], msg[2], op, msg[3])
        elif op == "observe":
            self._observe(*msg[1:])
        elif op == "cancel":
            rid = self._requests.get(msg[1])
            if rid is not None:
                self.gateway.manager.cancel(rid, msg[2])
        elif op == "claim":
            self._spawn(self._claim(msg[1], msg[2], msg[3]))
        elif op == "hello":
            self.index, self.pid = msg[1], msg[2]
            on_hello(self)
            # The worker claims request ids through us only when this replica shares state.
            share = self.gateway.share
            self.channel.send(("welcome", share.replica_id if share is not None else None))

    def _submit(
        self,
        token: int,
        request: RequestMetadata,
        stream: bool,
        trace_carrier: dict[str, str] | None,
    ) -> None:
        gw = self.gateway
        rid = request.request_id
        # x-request-id is idempotent: a resend joins the request (same as one process).
        results = gw.manager.results
        if results.live(rid) is not None or results.get(rid) is not None:
            self._requests[token] = rid
            self._spawn(self._join(token, rid))
            return
        if gw.shutting_down:
            self.channel.send(("rejected", token, 503, "the gateway is shutting down", None,
                               "shutting_down", None))  # fmt: skip
            return
        request = gw.experiment.tag(request)
        owners = self.executor.owners
        owners[rid] = _Owner(self, token)
        # Traced: the request's span continues the worker's SERVER span.
        trace_token = tracing.attach(trace_carrier)
        try:
            item = gw.manager.admission.admit(request, streaming=stream)
        except Exception as exc:
            del owners[rid]
            err = exception_to_error(exc)
            self.channel.send(("rejected", token, err.status, err.message, err.param, err.code,
                               err.headers))  # fmt: skip
            return
        finally:
            tracing.detach(trace_token)
        self._requests[token] = rid
        assert item.future is not None
        item.future.add_done_callback(lambda f: self._ended(token, item, f))

    def _ended(
        self, token: int, item: QueuedRequest, future: asyncio.Future[RequestResult]
    ) -> None:
        self.executor.owners.pop(item.request_id, None)
        self._requests.pop(token, None)
        if future.cancelled():
            return
        result = future.result()
        metrics = self.gateway.metrics
        metrics.observe_result(result)
        if result.state != RequestStatus.COMPLETED:
            self.channel.send(("result", token, result, False))
            return
        # The usual end, kept small: the worker has the answer (its attempt's outcome) and
        # needs only the headers' numbers. Its 200 is counted here, a message saved.
        t = result.timings
        self.channel.send(("done", token, result.instance_id, result.attempts, t.queue_ms,
                           t.ttft_ms, t.e2e_ms))  # fmt: skip
        if item.chunks is None:
            req = item.request
            self._observe(ENDPOINTS[req.request_kind], req.model_name, 200, req.priority)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A task answering the worker later (cancelled if the worker goes)."""
        task = asyncio.create_task(work)
        self._joins.add(task)
        task.add_done_callback(self._joins.discard)

    async def _claim(self, token: int, rid: str, dead: str | None) -> None:
        """The worker's request carries `x-request-id` `rid`: claim it across the replicas
        (`handover.claimed_elsewhere`, the same steps as one process), or take over the claim
        of `dead`, an owner the worker could not reach. One place holds the store and the
        peers' addresses; the worker forwards the request itself (its HTTP work)."""
        gw = self.gateway
        share = gw.share
        outcome: ClaimOutcome = Run("mine")  # no store (or a known id): run it here
        try:
            if share is not None and dead is not None:
                outcome = await share.claims.take_over(rid, dead)
            elif share is not None and not await gw.knows(rid):
                outcome = await share.claims.claim(rid)
        except Exception:  # a bug must not strand the worker's request: it runs here
            logger.exception("claiming request id %r failed", rid)
        self.channel.send(("claimed", token, outcome))

    async def _join(self, token: int, rid: str) -> None:
        try:
            result = await self.gateway.manager.wait(rid)
        except Exception as exc:
            err = exception_to_error(exc)
            self.channel.send(("rejected", token, err.status, err.message, err.param, err.code,
                               err.headers))  # fmt: skip
        else:
            self.gateway.metrics.observe_result(result)
            self.channel.send(("result", token, result, True))
        finally:
            self._requests.pop(token, None)

    def _finish_run(self, token: int, number: int, op: str, fields: tuple[Any, ...]) -> None:
        run = self._runs.get(token)
        if run is None or run.number != number or run.future.done():
            return  # an aborted attempt's late answer
        if op == "outcome":
            run.future.set_result(outcome_from(fields, self._loop.time()))
        else:
            run.future.set_exception(error_from(fields))

    def _observe(self, endpoint: str, model: object, status: int, priority: Any) -> None:
        self.gateway.metrics.observe_request(endpoint, model, status, priority)
        self.requests_answered += 1

    # -- to the worker ------------------------------------------------------------------
    async def run(
        self,
        token: int,
        instance: ExecutionInstance,
        relay: bool,
        extra: dict[str, Any] | None,
        stream: bool | None,
        on_first_token: Callable[[], None] | None,
        priority: int | None,
    ) -> Outcome:
        self._run_numbers += 1
        number = self._run_numbers
        run = _Run(number, self._loop.create_future(), on_first_token)
        self._runs[token] = run
        iid = instance.instance_id
        new = instance if self._sent.get(iid) is not instance else None
        self._sent[iid] = instance
        # Runs in the attempt's task: the request's span (or unsampled context) goes along.
        self.channel.send(("run", token, number, new, iid, extra, stream, relay, priority,
                           tracing.carrier()))  # fmt: skip
        try:
            return await run.future
        except asyncio.CancelledError:
            # Cancelled here (client gone, deadline, shutdown): stop it in the worker too.
            self.channel.send(("abort", token, number))
            raise
        finally:
            if self._runs.get(token) is run:
                del self._runs[token]

    def _lost(self) -> None:
        """The worker is gone, and its clients with it: cancel what it had in flight."""
        for run in self._runs.values():
            if not run.future.done():
                run.future.set_exception(
                    UpstreamError(f"worker {self.index} exited", retryable=False)
                )
        for rid in list(self._requests.values()):
            self.gateway.manager.cancel(rid, f"worker {self.index} exited")
        for task in self._joins:
            task.cancel()
