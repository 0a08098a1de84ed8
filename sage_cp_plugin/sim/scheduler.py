"""Which sequences run in the next engine step (vLLM v1's scheduling rules, simplified).

Running sequences go first, each taking its next tokens within the step's token budget
(``max_num_batched_tokens``; a long prompt is prefilled in chunks). When a running sequence
needs a KV block and none is free, a running sequence is preempted (recompute: its KV is
dropped and it returns to the waiting queue): under ``fcfs`` the most recently admitted one,
under ``priority`` the one with the largest ``(priority, arrival)`` (vLLM 0.32's victim rule;
a victim already batched this step gives its tokens back). Waiting sequences are admitted in
the queue's order (`WaitingQueue`: arrival, or priority then arrival) while sequence slots,
budget and KV last, reusing cached prefix blocks; a step that preempted admits nobody, as in
vLLM.
"""

from __future__ import annotations

from collections.abc import Callable

from sage_cp_plugin.sim.kv_cache import KVCache
from sage_cp_plugin.sim.metrics import SimMetrics
from sage_cp_plugin.sim.sequence import EngineCounters, SeqStatus, SimSequence
from sage_cp_plugin.sim.waiting_queue import SchedulingPolicyName, WaitingQueue

Batch = list[tuple[SimSequence, int]]


class StepScheduler:
    """Queues of one engine and the per-step batch decision."""

    def __init__(
        self,
        kv: KVCache,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        counters: EngineCounters,
        metrics: SimMetrics,
        now: Callable[[], float],
        on_transfer: Callable[[SimSequence], None],
        policy: SchedulingPolicyName = "fcfs",
    ) -> None:
        self.kv = kv
        self.counters = counters
        self.metrics = metrics
        self.policy = policy
        self.waiting = WaitingQueue(policy)
        self.running: list[SimSequence] = []
        self.transferring: set[SimSequence] = set()
        self._bs = kv.block_size
        self._max_seqs = max_num_seqs
        self._max_tokens = max_num_batched_tokens
        self._now = now
        self._on_transfer = on_transfer

    def schedule(self) -> tuple[Batch, int, int]:
        """The step's ``(sequence, new tokens)`` pairs, its prefill tokens and decode seqs."""
        budget = self._max_tokens
        batch: Batch = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            need = self.kv.blocks_for(seq.num_computed + n) - len(seq.blocks)
            if need > 0:
                new = self.kv.allocate(need)
                while new is None:
                    victim = self._victim()
                    if self.running.index(victim) < i:  # batched already: take it back
                        budget += _unbatch(batch, victim)
                        i -= 1
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
        while not preempted and self.waiting and budget > 0 and len(self.running) < self._max_seqs:
            seq = self.waiting.peek()
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
        seq.extend_hashes(num_tokens // self._bs, self._bs)
        # The last token is always recomputed, so a fully cached prompt still yields logits.
        return self.kv.match_prefix(seq.hashes[: (num_tokens - 1) // self._bs])

    def _count_query(self, seq: SimSequence, hit_tokens: int) -> None:
        # Counted once per request, at its first admission, in tokens (vLLM's unit). Like vLLM's
        # PrefixCacheStats, a preempted request's re-lookup is counted apart (and not exported):
        # a victim re-hitting its own blocks must not inflate the hit rate.
        if not self.kv.enable_prefix_caching or seq.pooling:
            return
        if seq.first_scheduled is not None:
            self.counters.preempted_prefix_queries += seq.num_tokens
            self.counters.preempted_prefix_hits += hit_tokens
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
        self.waiting.pop()
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        return n

    def _start_transfer(self, seq: SimSequence) -> bool:
        """PD decode: reserve KV for the whole prompt; the engine times the pull."""
        hit = self._match_prefix(seq)
        need = self.kv.blocks_for(seq.num_tokens) - len(hit)
        if need > self.kv.num_free - self.kv.evictable_among(hit):
            return False
        self.kv.touch(hit)
        new = self.kv.allocate(need)
        assert new is not None
        seq.blocks = [*hit, *new]
        seq.num_registered = len(hit)
        seq.num_cached_tokens = len(hit) * self._bs
        self._count_query(seq, seq.num_cached_tokens)
        seq.external_tokens = seq.num_tokens - seq.num_cached_tokens
        seq.first_scheduled = self._now()
        self.waiting.pop()
        seq.status = SeqStatus.TRANSFERRING
        self.transferring.add(seq)
        self._on_transfer(seq)
        return True

    def transfer_done(self, seq: SimSequence) -> None:
        """The prompt's KV arrived: the sequence rejoins the head of the queue."""
        self.transferring.discard(seq)
        seq.transfer_handle = None
        seq.remote_done = True
        # Every prompt token's KV is present; the last one is re-run to get the first logits.
        seq.num_computed = seq.num_tokens - 1
        self.register_blocks(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.prepend_kv_holder(seq)

    def remove(self, seq: SimSequence) -> None:
        """Forget ``seq`` wherever it is queued and free its KV (abort)."""
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

    def drop_finished(self) -> None:
        self.running = [s for s in self.running if s.status is SeqStatus.RUNNING]

    def _victim(self) -> SimSequence:
        """The running sequence vLLM preempts when KV runs out."""
        if self.policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival))
        return self.running[-1]

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
        self.waiting.prepend_preempted(seq)
        self.counters.preemptions += 1
        self.metrics.preemptions.inc()

    def register_blocks(self, seq: SimSequence) -> None:
        full = seq.num_computed // self._bs
        if full <= seq.num_registered or not self.kv.enable_prefix_caching or seq.pooling:
            return
        seq.extend_hashes(full, self._bs)
        if self.kv.on_event is None:
            self.kv.register_run(seq.blocks, seq.hashes, seq.num_registered, full)
        else:
            bs = self._bs
            tokens = seq.tokens_upto(full * bs)
            for i in range(seq.num_registered, full):
                self.kv.register(
                    seq.blocks[i],
                    seq.hashes[i],
                    seq.hashes[i - 1] if i else None,
                    tokens[i * bs : (i + 1) * bs],
                )
        seq.num_registered = full


def _unbatch(batch: Batch, seq: SimSequence) -> int:
    """Remove ``seq`` from this step's batch; returns the tokens it had been given."""
    for k, (s, n) in enumerate(batch):
        if s is seq:
            del batch[k]
            return n
    return 0
