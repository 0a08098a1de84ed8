"""Fast-forward runs of the simulated engine (`engine.py`).

When a step is pure decode for every running sequence, nothing waits, no sequence streams, and the next steps would not finish a sequence, those steps are identical (same batch,
same step time). The engine then sleeps once to the end of the run and replays the steps'
bookkeeping at their exact step boundaries, instead of waking once per token. A sequence that
fills its last KV block inside the run gets its next block between the two steps, in the order
``schedule`` would give it (so the same cached blocks are evicted, in the same order); the run
goes through full blocks only when the free list holds every block it needs (stepping could
otherwise preempt) and no KV events are published (each must go out at its own step's time),
else it stops where the first block fills.
Anything that could change the schedule -- a submit, abort, released pin, finished KV
transfer -- first applies the steps already completed and cuts the run at the step in
progress, and reads of the engine's state or metrics apply completed steps first, so what is
observable (finish times, counters, histograms, the next step's batch) is the same as stepping
one token at a time.

Pure functions over a batch and the KV cache; the engine (`engine.py`) sleeps through a run
and calls them to book it.
"""

from __future__ import annotations

import asyncio

from sage_cp_plugin.sim.kv_cache import KVCache
from sage_cp_plugin.sim.metrics import SimMetrics
from sage_cp_plugin.sim.scheduler import Batch, StepScheduler
from sage_cp_plugin.sim.sequence import EngineCounters, SeqStatus


def run_length(batch: Batch, prefill_tokens: int, sch: StepScheduler, kv: KVCache) -> int:
    """How many identical decode steps, this one included, can run without a change."""
    if prefill_tokens or sch.waiting or len(batch) != len(sch.running):
        return 1
    bs = kv.block_size
    steps = 1 << 30
    room = 1 << 30
    for seq, _n in batch:
        if seq.queue is not None:
            return 1  # streaming: each token is delivered at its own step
        # Steps until it finishes (that step ends the run) and steps its KV blocks hold.
        steps = min(steps, seq.max_tokens - seq.num_output)
        room = min(room, len(seq.blocks) * bs - seq.num_computed)
    if steps <= room:
        return steps
    if kv.on_event is not None:
        # KV events go out when a block is registered or evicted: the run stops where the
        # first block fills, so each goes out at its own step's time.
        return room
    # Past a full block the next step needs a new one: the run goes on when the free
    # list holds every block its steps need (`grow` takes each at its own step boundary,
    # in the order `schedule` would, so the same blocks are evicted); else, as stepping
    # could preempt, it stops where the first block fills.
    need = 0
    for seq, _n in batch:
        # Blocks taken at steps held, held + bs, ... before the run's end (held >= 1:
        # this step's block is allocated).
        held = len(seq.blocks) * bs - seq.num_computed
        if steps > held:
            need += (steps - held - 1) // bs + 1
    return steps if need <= kv.num_free else room


def grow(batch: Batch, kv: KVCache) -> None:
    """Between two steps of a run: what `schedule` does for a pure decode step, give a
    new KV block to each sequence whose blocks are full, in the batch's (running) order.
    `run_length` made sure the free list holds them all."""
    bs = kv.block_size
    for seq, _n in batch:
        if seq.num_computed + 1 > len(seq.blocks) * bs and seq.status is SeqStatus.RUNNING:
            new = kv.allocate(kv.blocks_for(seq.num_computed + 1) - len(seq.blocks))
            assert new is not None  # counted by `run_length`
            seq.blocks.extend(new)


def plain_steps(batch: Batch, block_size: int) -> int:
    """How many of the next steps are plain for every sequence of ``batch`` (0: this one
    is not): it does not finish a sequence nor fill a KV block (then blocks register)."""
    bs = block_size
    n = 1 << 30
    for seq, _n in batch:
        if seq.status is not SeqStatus.RUNNING or seq.last_token is None:
            return 0
        # First step that fills a block: num_computed + 1 reaches a multiple of bs.
        fills = -(seq.num_computed + 1) % bs
        # First step that produces the last token: num_output + 1 reaches max_tokens.
        ends = seq.max_tokens - seq.num_output - 1
        n = min(n, fills, ends)
    return max(n, 0)


def book_plain_steps(
    batch: Batch,
    ends: list[float],
    lo: int,
    hi: int,
    metrics: SimMetrics,
    counters: EngineCounters,
) -> None:
    """Plain steps ``lo..hi-1``: each sequence gets a token per step; every inter-token
    latency of step i is ``ends[i] - ends[i - 1]`` (each sequence's last token came at the
    previous step), observed in the order stepping one by one would."""
    itl = metrics.itl
    k = len(batch)
    for i in range(lo, hi):
        itl.observe_many(ends[i] - ends[i - 1], k)
    steps = hi - lo
    now = ends[hi - 1]
    for seq, _n in batch:
        seq.num_computed += steps
        seq.num_output += steps
        seq.last_token = now
    counters.steps += steps
    counters.generation_tokens += k * steps
    metrics.generation_tokens.inc(k * steps)


class Run:
    """A fast-forwarded run of identical decode steps: ``ends[i]`` is step i's boundary."""

    __slots__ = ("batch", "done", "ends", "fut", "handle")

    def __init__(
        self,
        batch: Batch,
        ends: list[float],
        fut: asyncio.Future[None],
        handle: asyncio.TimerHandle,
    ) -> None:
        self.batch = batch
        self.ends = ends
        self.done = 0  # steps already booked
        self.fut = fut
        self.handle = handle


def resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
