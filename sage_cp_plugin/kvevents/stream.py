"""Sequence numbers of one publisher: apply batches in order, notice gaps, recover.

vLLM numbers its published batches 0, 1, 2, ... per publisher and keeps the last ones for
replay. `EventStream` is the I/O-free part of a subscriber: it applies a batch whose number
is the next expected one, and reports a gap (a lost message, a late start) as the first
missing number, for which the subscriber asks the replay endpoint. Replayed batches that
close the gap are applied in order; when replay cannot close it (no replay endpoint, the
publisher no longer buffers those batches) the source's blocks are forgotten, because a
missed `BlockRemoved` would otherwise leave blocks in the index that the engine no longer
has -- routing to a phantom prefix is worse than routing without one. A number lower than
expected that no replay explains means the publisher restarted (its engine's cache is new):
the source is cleared and followed from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from sage_cp_plugin.kvevents.events import EventBatch
from sage_cp_plugin.kvevents.index import BlockIndex, SourceKey


@dataclass(slots=True)
class StreamStats:
    batches: int = 0
    events: int = 0
    gaps: int = 0
    replays_ok: int = 0
    replays_failed: int = 0
    restarts: int = 0
    clears: int = 0  # times the source was forgotten (gap not recoverable, restart)
    last_seq: int = -1
    last_ts: float = 0.0


class EventStream:
    def __init__(self, index: BlockIndex, source: SourceKey) -> None:
        self.index = index
        self.source = source
        self.next_seq = 0  # vLLM starts at 0: a first message above it is a gap too
        self._replayed_upto = -1  # highest seq applied from a replay (dedupes live copies)
        self.stats = StreamStats()

    def on_live(self, seq: int, batch: EventBatch) -> int | None:
        """Apply a live batch; returns the first missing seq when there is a gap.

        On a gap nothing is applied: the caller replays from the returned number (or calls
        `replay_failed`) and then hands this batch in again.
        """
        if seq < self.next_seq:
            if seq <= self._replayed_upto:
                return None  # already applied from the replay
            self.stats.restarts += 1
            self._clear()
            self.next_seq = seq
            self._replayed_upto = -1
        if seq > self.next_seq:
            self.stats.gaps += 1
            return self.next_seq
        self._apply(seq, batch)
        return None

    def on_replay(self, start: int, batches: list[tuple[int, EventBatch]]) -> None:
        """Batches the replay endpoint returned for a request from ``start``, in order."""
        covered = bool(batches) and batches[0][0] <= self.next_seq
        if not covered:
            # The publisher no longer has the first missing batch: what we hold may be stale.
            self.stats.replays_failed += 1
            self._clear()
        else:
            self.stats.replays_ok += 1
        for seq, batch in batches:
            if seq < self.next_seq and covered:
                continue
            self._apply(seq, batch)
            self._replayed_upto = seq

    def replay_failed(self, expected_next: int) -> None:
        """No replay possible: forget the source and follow the live stream from here."""
        self.stats.replays_failed += 1
        self._clear()
        self.next_seq = expected_next

    def _clear(self) -> None:
        self.stats.clears += 1
        self.index.clear_source(self.source)

    def _apply(self, seq: int, batch: EventBatch) -> None:
        for ev in batch.events:
            self.index.apply(self.source, ev)
        self.next_seq = seq + 1
        st = self.stats
        st.batches += 1
        st.events += len(batch.events)
        st.last_seq = seq
        st.last_ts = batch.ts
