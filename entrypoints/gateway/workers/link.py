"""A worker's connection to the scheduling process: it submits its clients' requests, runs
the attempts the scheduler hands it (the upstream HTTP call, with the ordinary
`ExecutionCoordinator`), relays streamed chunks straight to its client, and receives each
request's final result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.fleetshare.claims import ClaimOutcome
from sage_cp_plugin.streaming import next_batch
from sage_cp_plugin.tracing import spans as tracing
from sage_cp_plugin.types import (
    ExecutionInstance,
    RequestMetadata,
    RequestPriority,
    RequestResult,
    RequestStatus,
)

from ..errors import GatewayError, result_error
from .forwarding import error_fields, outcome_fields
from .wire import Channel

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Answer:
    """How a request ended, as the worker's response needs it. `result` is the whole
    `RequestResult` unless it completed here (then `response` is this worker's own)."""

    request_id: str
    instance_id: str
    attempts: int
    queue_ms: float | None
    ttft_ms: float | None
    e2e_ms: float | None
    response: dict[str, Any] | None
    result: RequestResult | None = None
    joined: bool = False  # a resend that joined an earlier request with its id
    counted: bool = False  # the scheduler already counted its 200 in /metrics

    @property
    def completed(self) -> bool:
        return self.result is None or self.result.state == RequestStatus.COMPLETED

    @classmethod
    def of(cls, result: RequestResult, joined: bool) -> Answer:
        t = result.timings
        return cls(result.request_id, result.instance_id or "", result.attempts, t.queue_ms,
                   t.ttft_ms, t.e2e_ms, result.response, result, joined)  # fmt: skip


@dataclass(slots=True)
class Submitted:
    """One of this worker's requests, from submission to its result."""

    token: int
    request: RequestMetadata
    done: asyncio.Future[Answer]
    chunks: asyncio.Queue[dict[str, Any] | None] | None  # streamed chunks; None ends them
    instance_id: str = ""  # where its current attempt runs
    attempt: asyncio.Task[None] | None = None
    attempt_number: int = 0
    answer: dict[str, Any] | None = None  # the last attempt's response
    counted: bool = False  # its answer was counted in /metrics by the scheduler

    async def stream(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The chunks as they arrive, all those that have arrived at each read (at least
        one; the relay writes them at once, sse.py); then the request's error if it failed."""
        queue = self.chunks
        assert queue is not None
        ended = False
        while not ended:
            batch, ended = await next_batch(queue)
            if batch:
                yield batch
        answer = await self.done
        if answer.result is not None and not answer.completed:
            raise result_error(answer.result)


class SchedulerLink:
    def __init__(self, channel: Channel, *, upstream_streaming: bool) -> None:
        self.channel = channel
        self.executor = ExecutionCoordinator(upstream_streaming=upstream_streaming)
        self._instances: dict[str, ExecutionInstance] = {}
        self._submitted: dict[int, Submitted] = {}
        self._tokens = 0
        self.alive = True
        self._loop = asyncio.get_running_loop()
        # The scheduler's answer to our hello: the replica id when it shares state with
        # other replicas (`--redis-url`; request ids are then claimed), else None.
        self.welcome: asyncio.Future[str | None] = self._loop.create_future()
        self.replica_id: str | None = None  # the welcome's, once it came
        self._claims: dict[int, asyncio.Future[ClaimOutcome]] = {}

    # -- requests of this worker's clients ----------------------------------------------
    def submit(self, request: RequestMetadata, *, stream: bool) -> Submitted:
        if not self.alive:
            raise GatewayError(503, "the scheduling process is gone", code="shutting_down")
        self._tokens += 1
        token = self._tokens
        sub = Submitted(token, request, self._loop.create_future(),
                        asyncio.Queue() if stream else None)  # fmt: skip
        self._submitted[token] = sub
        # Traced: this worker's SERVER span goes along, the scheduler's request span is
        # its child (docs/tracing.md, "--workers").
        self.channel.send(("submit", token, request, stream, tracing.carrier()))
        return sub

    async def claim(self, request_id: str, dead: str | None = None) -> ClaimOutcome:
        """Claim a request id across the replicas through the scheduler, or (`dead`) take
        over the claim of an owner that could not be reached (`handover.owners_answer`)."""
        if not self.alive:
            raise GatewayError(503, "the scheduling process is gone", code="shutting_down")
        self._tokens += 1
        future: asyncio.Future[ClaimOutcome] = self._loop.create_future()
        self._claims[self._tokens] = future
        self.channel.send(("claim", self._tokens, request_id, dead))
        return await future

    def cancel(self, sub: Submitted, reason: str) -> None:
        if not sub.done.done():
            self.channel.send(("cancel", sub.token, reason))

    def observe(
        self, endpoint: str, model: object, status: int, priority: RequestPriority | None
    ) -> None:
        self.channel.send(("observe", endpoint, model, status, priority))

    # -- from the scheduler ---------------------------------------------------------------
    async def listen(self) -> None:
        receive = self.channel.receive
        try:
            while (batch := await receive()) is not None:
                for msg in batch:
                    self._handle(msg)
        finally:
            self.alive = False
            gone = GatewayError(503, "the scheduling process is gone", code="shutting_down")
            for token in list(self._submitted):
                self._end(token, None, gone)
            for future in self._claims.values():
                if not future.done():
                    future.set_exception(gone)
                    future.exception()  # retrieved: a client gone before it must not log it
            if not self.welcome.done():
                self.welcome.set_exception(gone)
                self.welcome.exception()
            await self.executor.aclose()

    def _handle(self, msg: tuple[Any, ...]) -> None:
        op = msg[0]
        if op == "run":
            self._start(*msg[1:])
        elif op == "done":
            _, token, instance_id, attempts, queue_ms, ttft_ms, e2e_ms = msg
            sub = self._submitted.get(token)
            if sub is not None:
                answer = Answer(sub.request.request_id, instance_id, attempts, queue_ms,
                                ttft_ms, e2e_ms, sub.answer, counted=sub.chunks is None)  # fmt: skip
                self._end(token, answer, None)
        elif op == "result":
            self._end(msg[1], Answer.of(msg[2], msg[3]), None)
        elif op == "abort":
            sub = self._submitted.get(msg[1])
            if sub is not None and sub.attempt_number == msg[2] and sub.attempt:
                sub.attempt.cancel()
        elif op == "claimed":
            future = self._claims.pop(msg[1], None)
            if future is not None and not future.done():
                future.set_result(msg[2])
        elif op == "welcome":
            if not self.welcome.done():
                self.replica_id = msg[1]
                self.welcome.set_result(msg[1])
        elif op == "rejected":
            _, token, status, message, param, code, headers = msg
            error = GatewayError(status, message, param=param, code=code, headers=headers)
            self._end(token, None, error)

    def _end(self, token: int, outcome: Answer | None, error: Exception | None) -> None:
        sub = self._submitted.pop(token, None)
        if sub is None:
            return
        if not sub.done.done():
            if error is not None:
                sub.done.set_exception(error)
                sub.done.exception()  # retrieved: a client gone before it must not log it
            else:
                assert outcome is not None
                sub.done.set_result(outcome)
        if sub.attempt is not None and not sub.attempt.done():
            sub.attempt.cancel()
        if sub.chunks is not None:
            sub.chunks.put_nowait(None)

    def _start(
        self,
        token: int,
        number: int,
        instance: ExecutionInstance | None,
        instance_id: str,
        extra: dict[str, Any] | None,
        stream: bool | None,
        relay: bool,
        priority: int | None,
        trace_carrier: dict[str, str] | None,
    ) -> None:
        if instance is not None:
            self._instances[instance_id] = instance
        sub = self._submitted.get(token)
        if sub is None:  # its result already came (it was cancelled meanwhile)
            self.channel.send(("failed", token, number, error_fields(
                UpstreamError("the request is gone from the worker", retryable=False))))  # fmt: skip
            return
        sub.instance_id = instance_id
        sub.attempt_number = number
        sub.attempt = asyncio.create_task(
            self._attempt(sub, number, self._instances[instance_id], extra, stream, relay,
                          priority, trace_carrier)
        )  # fmt: skip

    async def _attempt(
        self,
        sub: Submitted,
        number: int,
        instance: ExecutionInstance,
        extra: dict[str, Any] | None,
        stream: bool | None,
        relay: bool,
        priority: int | None,
        trace_carrier: dict[str, str] | None,
    ) -> None:
        send = self.channel.send
        token = sub.token
        sink = sub.chunks.put_nowait if relay and sub.chunks is not None else None
        # Traced: the attempt's CLIENT span (made here, where the HTTP call is) is a child
        # of the scheduler's request span, and the engine's of it. This task's own context.
        tracing.attach(trace_carrier)
        try:
            out = await self.executor.run(
                sub.request, instance, sink=sink, extra=extra, stream=stream,
                on_first_token=lambda: send(("first", token)), priority=priority,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise  # aborted by the scheduler, which expects no answer
        except Exception as exc:
            send(("failed", token, number, error_fields(exc)))
        else:
            sub.answer = out.response
            send(("outcome", token, number, outcome_fields(out, self._loop.time())))

    async def aclose(self) -> None:
        for sub in list(self._submitted.values()):
            if sub.attempt is not None:
                sub.attempt.cancel()
        with contextlib.suppress(Exception):
            self.channel.close()
        await self.executor.aclose()
