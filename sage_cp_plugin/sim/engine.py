"""The simulated vLLM engine: continuous batching over a paged, prefix-cached KV cache.

One step loop per instance. Each step the scheduler (vLLM v1 style) gives every running
sequence its next tokens within a token budget (``max_num_batched_tokens``: chunked prefill),
admits waiting sequences while there are free sequence slots and KV blocks, and preempts the
most recently admitted running sequences (recompute: their KV is dropped) when a running one
cannot grow. The step then "runs" for
``t = b0 + b1 * prefill_tokens_in_step + b2 * decode_seqs_in_step`` (times ``time_scale``).

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
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from sage_cp_plugin.sim import tokens as tok
from sage_cp_plugin.sim.config import SimInstanceConfig
from sage_cp_plugin.sim.kv_cache import KVCache, chain_hashes
from sage_cp_plugin.sim.metrics import SimMetrics
from sage_cp_plugin.sim.sequence import RemotePrefill, SeqStatus, SimSequence

# Engines of this process by engine id: a decode engine tells the prefill engine it fetched the
# pinned KV (NIXL's "done" notification). Engines in other processes time their pins out.
_LIVE_ENGINES: weakref.WeakValueDictionary[str, SimEngine] = weakref.WeakValueDictionary()


class PromptTooLongError(ValueError):
    """Prompt plus requested output exceed ``max_model_len``."""


@dataclass
class EngineCounters:
    """Plain counters mirrored into Prometheus; cheap to read in tests and ``/sim/state``."""

    steps: int = 0
    prefix_cache_queries: int = 0  # tokens, as vLLM counts
    prefix_cache_hits: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    prompt_tokens_computed: int = 0
    generation_tokens: int = 0
    external_prompt_tokens: int = 0  # PD decode: prompt tokens whose KV arrived by transfer
    kv_transfers: int = 0
    pinned_released_by_fetch: int = 0
    pinned_expired: int = 0
    finished: int = 0
    aborted: int = 0
    max_batch_seqs: int = 0  # most sequences in one step: continuous-batching evidence


class SimEngine:
    """Schedules submitted sequences step by step; see the module docstring."""

    def __init__(self, config: SimInstanceConfig, metrics: SimMetrics | None = None) -> None:
        self.config = config
        self.engine_id = config.engine_id or f"sim-{uuid.uuid4().hex[:12]}"
        self.metrics = metrics or SimMetrics(config.model_name, decode_role=config.role == "decode")
        self.kv = KVCache(config.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.counters = EngineCounters()
        self.waiting: deque[SimSequence] = deque()
        self.running: list[SimSequence] = []
        self.transferring: set[SimSequence] = set()
        self.pinned: dict[str, tuple[SimSequence, asyncio.TimerHandle]] = {}
        self._ids = itertools.count()
        self._bs = config.block_size
        s = config.time_scale
        self._b0 = config.b0_ms * 1e-3 * s
        self._b1 = config.b1_us_per_token * 1e-6 * s
        self._b2 = config.b2_us_per_seq * 1e-6 * s
        self._xfer = config.kv_transfer_us_per_token * 1e-6 * s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
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
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for seq in [*self.running, *self.waiting, *self.transferring]:
            self.abort(seq)
        for rid in list(self.pinned):
            self.release_pinned(rid)
        _LIVE_ENGINES.pop(self.engine_id, None)

    # ---------------------------------------------------------------- requests

    def submit(
        self,
        prompt: list[str],
        max_tokens: int,
        *,
        stream: bool = False,
        pooling: bool = False,
        remote: RemotePrefill | None = None,
        pin_for_remote_decode: bool = False,
        request_id: str | None = None,
    ) -> SimSequence:
        """Queue a request; await ``seq.done`` or iterate ``seq.stream()`` for its output."""
        if not prompt:
            raise PromptTooLongError("the prompt must contain at least one token")
        limit = self.config.model_len
        if len(prompt) + max_tokens > limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages "
                "or completion."
            )
        loop = self._ensure_started()
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
        )
        self.waiting.append(seq)
        self._wake()
        return seq

    def abort(self, seq: SimSequence) -> None:
        """Drop a request wherever it is (client gone): its KV blocks are freed at once."""
        if seq.finished:
            return
        if seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        elif seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.TRANSFERRING:
            self.transferring.discard(seq)
            if seq.transfer_handle is not None:
                seq.transfer_handle.cancel()
        self.kv.free(seq.blocks)
        seq.blocks = []
        seq.status = SeqStatus.ABORTED
        seq.finish_reason = "abort"
        self.counters.aborted += 1
        self._signal_end(seq)
        self._wake()

    def release_pinned(self, request_id: str, *, fetched: bool = False) -> bool:
        """Free the KV a prefill kept for a remote decode; ``False`` if nothing was pinned."""
        entry = self.pinned.pop(request_id, None)
        if entry is None:
            return False
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
        return {
            "engine_id": self.engine_id,
            "role": self.config.role,
            "running": len(self.running),
            "waiting": len(self.waiting) + len(self.transferring),
            "transferring": len(self.transferring),
            "pinned": len(self.pinned),
            "kv_blocks_used": self.kv.num_used,
            "kv_blocks_total": self.kv.num_blocks,
            "kv_cache_usage": self.kv.usage,
            "counters": asdict(self.counters),
        }

    def render_metrics(self) -> bytes:
        return self.metrics.render(
            len(self.running), len(self.waiting) + len(self.transferring), self.kv.usage
        )

    # ---------------------------------------------------------------- step loop

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        while True:
            batch, prefill_tokens, decode_seqs = self._schedule()
            if not batch:
                # Nothing runnable (idle, or blocked on KV held by pins/transfers): sleep until
                # a submit, abort, release or finished transfer changes that.
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # sleep(0) still yields, so zero-latency mode interleaves with the HTTP handlers.
            await asyncio.sleep(self._b0 + self._b1 * prefill_tokens + self._b2 * decode_seqs)
            self._complete(batch)

    def _schedule(self) -> tuple[list[tuple[SimSequence, int]], int, int]:
        budget = self.config.max_num_batched_tokens
        batch: list[tuple[SimSequence, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            need = self.kv.blocks_for(seq.num_computed + n) - len(seq.blocks)
            if need > 0:
                new = self.kv.allocate(need)
                while new is None:
                    victim = self.running[-1]
                    self._preempt(victim)
                    preempted = True
                    if victim is seq:
                        break
                    new = self.kv.allocate(need)
                if new is None:
                    break
                seq.blocks.extend(new)
            batch.append((seq, n))
            budget -= n
            i += 1
        # Like vLLM, a step that had to preempt admits nobody new.
        while (
            not preempted
            and self.waiting
            and budget > 0
            and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            if seq.remote is not None and not seq.remote_done:
                if not self._start_transfer(seq):
                    break
                continue
            n = self._admit(seq, budget)
            if n == 0:
                break
            batch.append((seq, n))
            budget -= n
        prefill_tokens = decode_seqs = 0
        for seq, n in batch:
            if (
                n == 1
                and seq.num_computed == seq.num_tokens - 1
                and (seq.num_output > 0 or seq.remote_done)
            ):
                decode_seqs += 1
            else:
                prefill_tokens += n
        if len(batch) > self.counters.max_batch_seqs:
            self.counters.max_batch_seqs = len(batch)
        return batch, prefill_tokens, decode_seqs

    def _match_prefix(self, seq: SimSequence) -> list[int]:
        """Cached blocks holding the head of ``seq`` (not yet referenced)."""
        if not self.kv.enable_prefix_caching or seq.pooling:
            return []
        num_tokens = seq.num_tokens
        if len(seq.hashes) < num_tokens // self._bs:
            seq.hashes = chain_hashes(seq.tokens_upto(num_tokens), self._bs)
        # The last token is always recomputed, so a fully cached prompt still yields logits.
        return self.kv.match_prefix(seq.hashes[: (num_tokens - 1) // self._bs])

    def _count_query(self, seq: SimSequence, hit_tokens: int) -> None:
        # Counted once per admission that succeeds, in tokens (vLLM's unit).
        if not self.kv.enable_prefix_caching or seq.pooling:
            return
        self.counters.prefix_cache_queries += seq.num_tokens
        self.counters.prefix_cache_hits += hit_tokens
        self.metrics.prefix_queries.inc(seq.num_tokens)
        self.metrics.prefix_hits.inc(hit_tokens)

    def _admit(self, seq: SimSequence, budget: int) -> int:
        """Move the head of ``waiting`` into the batch; 0 if its KV does not fit."""
        transferred = bool(seq.blocks)  # PD decode: the prompt's KV is already here
        hit = [] if transferred else self._match_prefix(seq)
        computed = seq.num_computed if transferred else len(hit) * self._bs
        n = min(seq.num_tokens - computed, budget)
        need = self.kv.blocks_for(computed + n) - len(seq.blocks) - len(hit)
        if need > self.kv.num_free - self.kv.evictable_among(hit):
            return 0
        self.kv.touch(hit)
        new = self.kv.allocate(need)
        assert new is not None
        if not transferred:
            seq.blocks = [*hit, *new]
            seq.num_computed = computed
            seq.num_registered = len(hit)
            self._count_query(seq, computed)
        else:
            seq.blocks.extend(new)
        if seq.first_scheduled is None:
            seq.first_scheduled = self._now()
            seq.num_cached_tokens = computed
        self.waiting.popleft()
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        return n

    def _start_transfer(self, seq: SimSequence) -> bool:
        """PD decode: reserve KV for the whole prompt and start pulling it from the prefill."""
        hit = self._match_prefix(seq)
        need = self.kv.blocks_for(seq.num_tokens) - len(hit)
        if need > self.kv.num_free - self.kv.evictable_among(hit):
            return False
        self.kv.touch(hit)
        new = self.kv.allocate(need)
        assert new is not None and self._loop is not None
        seq.blocks = [*hit, *new]
        seq.num_registered = len(hit)
        seq.num_cached_tokens = len(hit) * self._bs
        self._count_query(seq, seq.num_cached_tokens)
        seq.external_tokens = seq.num_tokens - seq.num_cached_tokens
        seq.first_scheduled = self._now()
        self.waiting.popleft()
        seq.status = SeqStatus.TRANSFERRING
        self.transferring.add(seq)
        delay = self._xfer * seq.external_tokens
        seq.transfer_handle = self._loop.call_later(delay, self._transfer_done, seq, delay)
        return True

    def _transfer_done(self, seq: SimSequence, duration: float) -> None:
        self.transferring.discard(seq)
        seq.transfer_handle = None
        seq.remote_done = True
        # Every prompt token's KV is present; the last one is re-run to get the first logits.
        seq.num_computed = seq.num_tokens - 1
        self._register_blocks(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
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

    def _preempt(self, seq: SimSequence) -> None:
        # Recompute preemption: the KV is dropped; cached full blocks may still be reused.
        self.running.remove(seq)
        self.kv.free(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        seq.num_registered = 0
        seq.remote = None  # a recompute is local; the transferred KV is gone
        seq.remote_done = False
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        self.counters.preemptions += 1
        self.metrics.preemptions.inc()

    def _register_blocks(self, seq: SimSequence) -> None:
        full = seq.num_computed // self._bs
        if full <= seq.num_registered or not self.kv.enable_prefix_caching or seq.pooling:
            return
        if len(seq.hashes) < full:
            parent = seq.hashes[-1] if seq.hashes else 0
            seq.hashes.extend(
                chain_hashes(seq.tokens_upto(full * self._bs), self._bs, len(seq.hashes), parent)
            )
        for i in range(seq.num_registered, full):
            self.kv.register(seq.blocks[i], seq.hashes[i])
        seq.num_registered = full

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _complete(self, batch: list[tuple[SimSequence, int]]) -> None:
        now = self._now()
        self.counters.steps += 1
        generated = 0
        finished = False
        for seq, n in batch:
            if seq.status is not SeqStatus.RUNNING:
                continue  # aborted or preempted while the step ran
            seq.num_computed += n
            self._register_blocks(seq)
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
            self.running = [s for s in self.running if s.status is SeqStatus.RUNNING]

    def _count_prompt(self, seq: SimSequence) -> None:
        p = len(seq.prompt)
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
