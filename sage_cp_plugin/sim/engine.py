"""The simulated vLLM engine: continuous batching over a paged, prefix-cached KV cache.

One step loop per instance. Each step the scheduler (vLLM v1 style) gives every running
sequence its next tokens within a token budget (``max_num_batched_tokens``: chunked prefill),
admits waiting sequences while there are free sequence slots and KV blocks, and preempts the
most recently admitted running sequences (recompute: their KV is dropped) when a running one
cannot grow. The step then "runs" for
``t = b0 + b1 * prefill_tokens_in_step + b2 * decode_seqs_in_step`` (times ``time_scale``).

Fast-forward (`fast_forward.py`): runs of identical pure-decode steps are slept through once
and their bookkeeping replayed at the exact step boundaries; what is observable is the same
as stepping one token at a time.

Timekeeping uses only the running loop's ``time()``, ``asyncio.sleep`` and loop timers -- no
wall clock, threads or blocking calls -- so the same engine runs unchanged on a virtual-clock
event loop where sleeping jumps the clock to the next timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
import weakref
from dataclasses import asdict
from itertools import accumulate, repeat
from typing import Any

from sage_cp_plugin.sim import fast_forward as ff
from sage_cp_plugin.sim import tokens as tok
from sage_cp_plugin.sim.config import SimInstanceConfig
from sage_cp_plugin.sim.kv_cache import KVCache
from sage_cp_plugin.sim.metrics import SimMetrics
from sage_cp_plugin.sim.scheduler import Batch, StepScheduler
from sage_cp_plugin.sim.sequence import EngineCounters, RemotePrefill, SeqStatus, SimSequence

# Engines of this process by engine id: a decode engine tells the prefill engine it fetched the
# pinned KV (NIXL's "done" notification). Engines in other processes time their pins out.
_LIVE_ENGINES: weakref.WeakValueDictionary[str, SimEngine] = weakref.WeakValueDictionary()


class PromptTooLongError(ValueError):
    """Prompt plus requested output exceed ``max_model_len``."""


class SimEngine:
    """Schedules submitted sequences step by step; see the module docstring."""

    # Fast-forward runs of identical decode steps (module docstring); ``False`` wakes per step.
    fast_forward = True

    def __init__(self, config: SimInstanceConfig, metrics: SimMetrics | None = None) -> None:
        self.config = config
        self.engine_id = config.engine_id or f"sim-{uuid.uuid4().hex[:12]}"
        self.metrics = metrics or SimMetrics(config.model_name, decode_role=config.role == "decode")
        self.kv = KVCache(config.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.counters = EngineCounters()
        self.scheduler = StepScheduler(
            self.kv,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            counters=self.counters,
            metrics=self.metrics,
            now=self._now,
            on_transfer=self._start_transfer_timer,
            policy=config.scheduling_policy,
        )
        self.pinned: dict[str, tuple[SimSequence, asyncio.TimerHandle]] = {}
        self._ids = itertools.count()
        s = config.time_scale
        self._b0 = config.b0_ms * 1e-3 * s
        self._b1 = config.b1_us_per_token * 1e-6 * s
        self._b2 = config.b2_us_per_seq * 1e-6 * s
        self._xfer = config.kv_transfer_us_per_token * 1e-6 * s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._ff: ff.Run | None = None  # the fast-forwarded run of decode steps in progress
        _LIVE_ENGINES[self.engine_id] = self

    # ---------------------------------------------------------------- lifecycle

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        # Started lazily on first use: httpx.ASGITransport never runs ASGI lifespan events.
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._wakeup = asyncio.Event()
            self._task = self._loop.create_task(self._run(), name=f"sim-engine-{self.engine_id}")
        assert self._loop is not None
        return self._loop

    async def stop(self) -> None:
        """Stop the step loop and abort every request (their streams end)."""
        self._sync()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sch = self.scheduler
        for seq in [*sch.running, *sch.waiting, *sch.transferring]:
            self.abort(seq)
        for rid in list(self.pinned):
            self.release_pinned(rid)
        _LIVE_ENGINES.pop(self.engine_id, None)

    # ---------------------------------------------------------------- requests

    def submit(
        self,
        prompt: list[str] | str,
        max_tokens: int,
        *,
        stream: bool = False,
        pooling: bool = False,
        remote: RemotePrefill | None = None,
        pin_for_remote_decode: bool = False,
        request_id: str | None = None,
        priority: int = 0,
    ) -> SimSequence:
        """Queue a request; await ``seq.done`` or iterate ``seq.stream()`` for its output.

        ``prompt``: its words, or a text (tokenized here; a plain text stays a text, see
        `tokens.separators`)."""
        seps = None
        if isinstance(prompt, str):
            seps = tok.separators(prompt)
            if seps is None:
                prompt = tok.tokenize(prompt)
        n = len(prompt) if seps is None else seps.size + 1
        if not prompt:
            raise PromptTooLongError("the prompt must contain at least one token")
        limit = self.config.model_len
        if n + max_tokens > limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {n + max_tokens} tokens ({n} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages "
                "or completion."
            )
        loop = self._ensure_started()
        self._interrupt()
        out = [] if pooling else tok.generate(self.config.seed, prompt, max_tokens)
        seq = SimSequence(
            request_id or f"req-{next(self._ids)}",
            prompt,
            out,
            loop.time(),
            stream=stream,
            pooling=pooling,
            remote=remote,
            pin_for_remote_decode=pin_for_remote_decode,
            priority=priority,
            seps=seps,
        )
        self.scheduler.waiting.add(seq)
        self._wake()
        return seq

    def abort(self, seq: SimSequence) -> None:
        """Drop a request wherever it is (client gone): its KV blocks are freed at once."""
        self._interrupt()
        if seq.finished:
            return
        self.scheduler.remove(seq)
        seq.status = SeqStatus.ABORTED
        seq.finish_reason = "abort"
        self.counters.aborted += 1
        self._signal_end(seq)
        self._wake()

    def release_pinned(self, request_id: str, *, fetched: bool = False) -> bool:
        """Free the KV a prefill kept for a remote decode; ``False`` if nothing was pinned."""
        if request_id not in self.pinned:
            return False
        self._interrupt()
        entry = self.pinned.pop(request_id)
        seq, handle = entry
        handle.cancel()
        self.kv.free(seq.pinned_blocks)
        seq.pinned_blocks = []
        if fetched:
            self.counters.pinned_released_by_fetch += 1
        else:
            self.counters.pinned_expired += 1
        self._wake()
        return True

    def state(self) -> dict[str, Any]:
        self._sync()
        sch = self.scheduler
        return {
            "engine_id": self.engine_id,
            "role": self.config.role,
            "running": len(sch.running),
            "waiting": len(sch.waiting) + len(sch.transferring),
            "transferring": len(sch.transferring),
            "pinned": len(self.pinned),
            "kv_blocks_used": self.kv.num_used,
            "kv_blocks_total": self.kv.num_blocks,
            "kv_cache_usage": self.kv.usage,
            "counters": asdict(self.counters),
        }

    def render_metrics(self) -> bytes:
        self._sync()
        sch = self.scheduler
        return self.metrics.render(
            len(sch.running), len(sch.waiting) + len(sch.transferring), self.kv.usage
        )

    # ---------------------------------------------------------------- step loop

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        while True:
            batch, prefill_tokens, decode_seqs = self.scheduler.schedule()
            if not batch:
                # Nothing runnable (idle, or blocked on KV held by pins/transfers): sleep until
                # a submit, abort, release or finished transfer changes that.
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            delay = self._b0 + self._b1 * prefill_tokens + self._b2 * decode_seqs
            steps = (
                ff.run_length(batch, prefill_tokens, self.scheduler, self.kv)
                if delay > 0 and self.fast_forward
                else 1
            )
            if steps <= 1:
                # sleep(0) still yields, so zero-latency mode interleaves with the HTTP handlers.
                await asyncio.sleep(delay)
                self._complete(batch, self._loop.time())
                continue
            # Step boundaries exactly as `steps` consecutive sleeps would put them (the same
            # float additions, one after the other).
            ends = list(accumulate(repeat(delay, steps - 1), initial=self._loop.time() + delay))
            fut: asyncio.Future[None] = self._loop.create_future()
            run = ff.Run(batch, ends, fut, self._loop.call_at(ends[-1], ff.resolve, fut))
            self._ff = run
            try:
                await run.fut
            finally:
                self._ff = None
                run.handle.cancel()
            self._apply(run, len(run.ends))

    def _apply(self, run: ff.Run, upto: int) -> None:
        """Book the run's steps up to ``upto`` (exclusive) at their own boundaries."""
        batch = run.batch
        last = len(run.ends) - 1
        i = run.done
        while i < upto:
            plain = 0 if i == 0 or i == last else ff.plain_steps(batch, self.kv.block_size)
            if plain == 0:
                run.done = i + 1
                self._complete(batch, run.ends[i])
                i += 1
                if i < len(run.ends):
                    ff.grow(batch, self.kv)  # the next step of the run is scheduled now
                continue
            # Middle steps of the run: every sequence is running, past its first token, not
            # finishing and not filling a KV block -- `_complete` reduced to what it does then,
            # booked for all of them at once.
            j = min(i + plain, upto, last)
            ff.book_plain_steps(batch, run.ends, i, j, self.metrics, self.counters)
            i = run.done = j

    def _sync(self) -> None:
        """Apply the fast-forwarded steps that have completed by now."""
        run = self._ff
        if run is None or self._loop is None:
            return
        now = self._loop.time()
        ends = run.ends
        j = run.done
        while j < len(ends) and ends[j] <= now:
            j += 1
        self._apply(run, j)

    def _interrupt(self) -> None:
        """Something may change the next schedule: end the run after the step in progress."""
        run = self._ff
        if run is None or self._loop is None:
            return
        self._sync()
        last = run.done + 1  # the step in progress ends the run
        if last < len(run.ends):
            del run.ends[last:]
            run.handle.cancel()
            run.handle = self._loop.call_at(run.ends[-1], ff.resolve, run.fut)

    def _start_transfer_timer(self, seq: SimSequence) -> None:
        assert self._loop is not None
        delay = self._xfer * seq.external_tokens
        seq.transfer_handle = self._loop.call_later(delay, self._transfer_done, seq, delay)

    def _transfer_done(self, seq: SimSequence, duration: float) -> None:
        self.scheduler.transfer_done(seq)
        self.counters.kv_transfers += 1
        self.counters.external_prompt_tokens += seq.external_tokens
        self.metrics.external_queries.inc(seq.external_tokens)
        self.metrics.external_hits.inc(seq.external_tokens)
        if self.metrics.nixl_xfer is not None:
            self.metrics.nixl_xfer.observe(duration)
        assert seq.remote is not None
        producer = _LIVE_ENGINES.get(seq.remote.engine_id)
        if producer is not None and seq.remote.request_id is not None:
            producer.release_pinned(seq.remote.request_id, fetched=True)
        self._wake()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _complete(self, batch: Batch, now: float) -> None:
        self.counters.steps += 1
        generated = 0
        finished = False
        for seq, n in batch:
            if seq.status is not SeqStatus.RUNNING:
                continue  # aborted or preempted while the step ran
            seq.num_computed += n
            self.scheduler.register_blocks(seq)
            if seq.num_computed < seq.num_tokens:
                continue  # a chunk of a long prefill; no token yet
            if seq.pooling:
                self._count_prompt(seq)
                self._finish(seq, now)
                finished = True
                continue
            word = seq.output[seq.num_output]
            seq.num_output += 1
            generated += 1
            if seq.first_token is None:
                seq.first_token = now
                self.metrics.ttft.observe(now - seq.arrival)
                self._count_prompt(seq)
            elif seq.last_token is not None:
                self.metrics.itl.observe(now - seq.last_token)
            seq.last_token = now
            if seq.queue is not None:
                seq.queue.put_nowait(word)
            if seq.num_output >= seq.max_tokens:
                self._finish(seq, now)
                finished = True
        if generated:
            self.counters.generation_tokens += generated
            self.metrics.generation_tokens.inc(generated)
        if finished:
            self.scheduler.drop_finished()

    def _count_prompt(self, seq: SimSequence) -> None:
        p = seq.prompt_len
        cached = min(seq.num_cached_tokens, p)
        external = min(seq.external_tokens, p - cached)
        computed = p - cached - external
        c, m = self.counters, self.metrics
        c.prompt_tokens += p
        c.prompt_tokens_computed += computed
        m.prompt_tokens.inc(p)
        m.prompt_cached.inc(cached + external)
        m.prompt_local_compute.inc(computed)
        m.prompt_local_cache_hit.inc(cached)
        m.prompt_external.inc(external)

    def _finish(self, seq: SimSequence, now: float) -> None:
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = "length"
        self.counters.finished += 1
        m = self.metrics
        m.e2e.observe(now - seq.arrival)
        m.queue_time.observe((seq.first_scheduled or now) - seq.arrival)
        m.success_length.inc()
        if seq.pin_for_remote_decode and self._loop is not None:
            # Keep the KV for the decode instance to pull; free it if nobody comes.
            seq.pinned_blocks, seq.blocks = seq.blocks, []
            handle = self._loop.call_later(
                self.config.kv_pin_timeout_s, self.release_pinned, seq.request_id
            )
            self.pinned[seq.request_id] = (seq, handle)
        else:
            self.kv.free(seq.blocks)
            seq.blocks = []
        self._signal_end(seq)

    @staticmethod
    def _signal_end(seq: SimSequence) -> None:
        if seq.queue is not None:
            seq.queue.put_nowait(None)
        if not seq.done.done():
            seq.done.set_result(None)
