"""Connection deadlines of one server, each expired at its time by one shared timer.

Why not a timer per connection: arming a limit happens three times per request (headers,
body, keep-alive), and `call_later` + `cancel` cost 5.5 us per arm against 0.4 us for a float
assignment with 1,000 timers pending (measured for the sweep this replaces). Why not a
periodic sweep: it closed connections up to one interval late (5.12-5.57 s for 5 s timeouts
with a 0.5 s interval) and walked every open connection on each tick.

Every deadline is `now + one of a few fixed timeouts`, and the loop clock only moves forward,
so the deadlines armed with one timeout arrive in order: one FIFO per timeout length is a
sorted queue with O(1) arming, and the earliest deadline of all is the smallest FIFO head.
One `call_at` timer waits for it. An armed entry is a two-item list `[deadline, connection]`;
cancelling clears the connection (no search, and a closed connection is not kept alive by a
stale entry); stale entries are dropped when they reach the head, or by a compaction once a
FIFO holds more than twice the armed entries (amortised O(1) per arm, memory bounded by the
open connections rather than by the request rate).

Lateness: the timer fires at the earliest deadline, but at most once per `resolution_s`
(10 ms), so a burst of deadlines a few microseconds apart costs one wake-up, not one each.
A connection is expired at most `resolution_s` plus the loop's own delay after its deadline,
however many connections are open. One wake-up expires at most `batch` connections (64, a
few ms of writing 408s and closing); more due ones are taken at the next loop iteration, so
1,000 connections opened together and expiring together do not hold the loop for the whole
burst while normal requests wait.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

# asyncio runs a timer when its time is within the clock's resolution of now.
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


class Expiring(Protocol):
    def expire(self) -> None: ...


@dataclass
class Lateness:
    """How late this process's deadlines were expired: loop time at expiry minus deadline
    (exported on /metrics; read by benchmarks/bench_hostile.py)."""

    count: int = 0
    sum_s: float = 0.0
    max_s: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.sum_s += seconds
        self.max_s = max(self.max_s, seconds)


LATENESS = Lateness()

Entry = list[Any]  # [deadline in loop time, the Expiring connection or None once cancelled]


class Deadlines:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, resolution_s: float = 0.01, batch: int = 64
    ) -> None:
        self.loop = loop
        self.resolution_s = resolution_s
        self.batch = batch
        self._fifos: dict[float, deque[Entry]] = {}
        self._armed = 0  # entries not cancelled nor expired
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return self._armed

    def arm(self, conn: Expiring, seconds: float) -> Entry:
        """`conn.expire()` will be called `seconds` from now unless the entry is cancelled."""
        at = self.loop.time() + seconds
        entry: Entry = [at, conn]
        fifo = self._fifos.get(seconds)
        if fifo is None:
            fifo = self._fifos[seconds] = deque()
        fifo.append(entry)
        self._armed += 1
        if len(fifo) > 2 * self._armed + 64:
            live = [e for e in fifo if e[1] is not None]
            fifo.clear()
            fifo.extend(live)
        if at < self._timer_at:
            self._schedule(at)
        return entry

    def cancel(self, entry: Entry) -> None:
        if entry[1] is not None:
            entry[1] = None
            self._armed -= 1

    @property
    def timer_at(self) -> float:
        """Loop time of the next wake-up (inf when nothing is armed or pending)."""
        return self._timer_at

    def queued(self) -> int:
        """Entries held, cancelled ones included (bounded by the compaction)."""
        return sum(len(f) for f in self._fifos.values())

    def _schedule(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        clock = self.loop.time()
        now = clock + _CLOCK_RESOLUTION
        due: list[Expiring] = []
        for fifo in self._fifos.values():
            while fifo and fifo[0][0] <= now and len(due) < self.batch:
                entry = fifo.popleft()
                if entry[1] is not None:
                    due.append(entry[1])
                    LATENESS.add(max(0.0, clock - entry[0]))
                    entry[1] = None
                    self._armed -= 1
        for conn in due:
            conn.expire()
        if len(due) == self.batch:
            self._schedule(clock)  # maybe more due: once what else is ready has run
            return
        heads = [f[0][0] for f in self._fifos.values() if f]
        if heads:
            # Not sooner than resolution_s from now: one wake-up per burst of deadlines.
            self._schedule(max(min(heads), now + self.resolution_s))
