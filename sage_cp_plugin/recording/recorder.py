"""Turns each finished request into a `RequestLogRecord` for the writer thread.

`RequestRecorder.observe(item, result)` is called by `results.ResultStore` when a request
ends (completed, failed, cancelled: every request exactly once). On the event loop it only
reads the few fields it needs into a closure and queues it; the record itself (and the block
hashes of the prompt) is built on the writer thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.recording.config import RequestLogConfig
from sage_cp_plugin.recording.hashing import block_hashes
from sage_cp_plugin.recording.record import LoggedDecision, LoggedTimings, RequestLogRecord
from sage_cp_plugin.recording.writer import RequestLogWriter
from sage_cp_plugin.types import RequestKind, RequestResult
from sage_cp_plugin.workloads.format import BLOCK_TOKENS


class RequestRecorder:
    """Observer of finished requests writing the request log (see the module docstring)."""

    def __init__(self, config: RequestLogConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.writer = RequestLogWriter(config)
        self._clock = clock
        self._salt = (config.salt.encode() if config.salt is not None else os.urandom(16))[:64]
        self._epoch: float | None = None  # loop time of the log's arrival 0

    @property
    def dropped(self) -> int:
        return self.writer.dropped

    def set_epoch(self, loop_time: float) -> None:
        """Arrivals count from here (the manager sets its start; without it, the first
        finished request's arrival)."""
        self._epoch = loop_time

    def observe(self, item: QueuedRequest, result: RequestResult) -> None:
        now = self._clock()
        if self._epoch is None:
            self._epoch = item.arrival
        arrival_s = max(0.0, item.arrival - self._epoch)
        arrival_unix = time.time() - (now - item.arrival)
        req = item.request
        token_ids = item.prompt_token_ids
        estimate = item.input_tokens
        salt = self._salt
        text_on = self.config.text
        source = self.config.source

        def build() -> RequestLogRecord:
            text = req.prompt_text() if req.kind != RequestKind.EMBEDDING else ""
            tokens: list[str] | list[int] = token_ids if token_ids is not None else text.split()
            engine_count = result.prompt_tokens > 0
            d = result.decision
            t = result.timings
            return RequestLogRecord(
                request_id=item.request_id,
                source=source,
                arrival_s=arrival_s,
                arrival_unix=arrival_unix,
                model=req.model_name,
                kind=req.kind or RequestKind.CHAT,
                stream=req.stream,
                priority=req.priority,
                ttft_slo_ms=req.ttft_slo_ms,
                tpot_slo_ms=req.tpot_slo_ms,
                deadline_ms=req.slo_deadline_ms,
                user_id=req.user_id,
                tenant=str(req.tags["tenant"]) if "tenant" in req.tags else None,
                billing_tier=req.billing_tier,
                tags=dict(req.tags),
                arm=str(req.tags["arm"]) if "arm" in req.tags else None,
                input_tokens=result.prompt_tokens if engine_count else estimate,
                input_tokens_source="engine" if engine_count else "estimate",
                max_tokens=req.max_tokens,
                output_tokens=result.completion_tokens,
                block_tokens=BLOCK_TOKENS,
                prefix_hashes=block_hashes(tokens, BLOCK_TOKENS, salt),
                prompt=text if text_on else None,
                decision=LoggedDecision(
                    instance_id=result.instance_id,
                    policy=d.policy if d is not None else "",
                    router=d.router if d is not None else "",
                    phase=d.phase.value if d is not None and d.phase is not None else None,
                    prefill_instance_id=(
                        d.metadata.get("prefill_instance_id")
                        if d is not None and d.metadata.get("prefill_used")
                        else None
                    ),
                ),
                timings=LoggedTimings(
                    queue_ms=t.queue_ms,
                    prefill_ms=t.prefill_ms,
                    ttft_ms=t.ttft_ms,
                    tpot_ms=t.tpot_ms,
                    e2e_ms=t.e2e_ms,
                ),
                state=result.state,
                error_type=result.error_type,
                status_code=result.status_code,
                attempts=result.attempts,
                slo_met=result.slo_met,
                cost=result.cost,
            )

        self.writer.submit(build)

    def flush(self) -> None:
        """Block until everything queued is on disk (from a thread or a test)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
