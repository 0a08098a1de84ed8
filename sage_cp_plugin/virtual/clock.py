"""An asyncio event loop whose clock is virtual: idle time is skipped, not waited.

`VirtualClockEventLoop` is asyncio's own selector loop with two changes: `time()` returns a
virtual clock, and the selector never sleeps. When no callback is ready and no I/O is pending,
the loop would block in `select(timeout)` until the next timer; here the clock jumps straight to
that timer's deadline instead. Everything else (tasks, futures, `call_at`, `asyncio.sleep`,
`wait_for` timeouts) is the unchanged standard library, so the coordinator and the simulator run
on it exactly as they do in real time -- they only ever read `loop.time()`.

Real I/O still works (the self-pipe, a socket a test opens): the selector is polled with a zero
timeout first, and only when it reports nothing is the clock advanced (while callbacks are
ready, it is polled every few passes only: see `_VirtualSelector.POLL_EVERY`). When there is neither a
timer nor a ready callback the loop falls back to a real blocking `select`, so work handed to a
thread (`run_in_executor`) can still wake it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from sage_cp_plugin.virtual.timer_heap import PairTimerHeap

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """A real selector that turns a positive timeout into a clock jump."""

    # While callbacks are ready (timeout 0) the real poll, a system call, is made only every
    # this many passes: a replay runs ~10 such passes per request and has no real I/O, and
    # I/O a test opens is still seen within a few passes and before every clock jump.
    POLL_EVERY = 16

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockEventLoop | None = None
        self._busy_passes = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout == 0:
            self._busy_passes += 1
            if self._busy_passes < self.POLL_EVERY:
                return []
        self._busy_passes = 0
        events = super().select(0)
        if events or timeout == 0:
            return events
        loop = self.loop
        if timeout is None or loop is None:
            # Nothing scheduled at all: only another thread can make progress; wait for it.
            return super().select(timeout)
        loop.advance_to_next_timer(timeout)
        return []


class VirtualClockEventLoop(PairTimerHeap, asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (see the module docstring).

    `start` is the clock's initial value. `jumps` counts clock advances and `skipped_s` the
    total virtual time skipped: cheap evidence that a run was really driven by timers.
    """

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = float(start)
        self.jumps = 0
        self.skipped_s = 0.0

    def time(self) -> float:
        return self._virtual_now

    def advance_to_next_timer(self, timeout: float) -> None:
        """Move the clock to the earliest scheduled timer (called only when the loop is idle).

        Jumping to the timer's own deadline, rather than to ``now + timeout``, avoids a float
        rounding gap that would leave the timer a hair in the future and spin the loop.
        """
        first = self.next_timer_when()
        target = first if first is not None else self._virtual_now + timeout
        if target > self._virtual_now:
            self.skipped_s += target - self._virtual_now
            self._virtual_now = target
            self.jumps += 1

    def advance(self, seconds: float) -> None:
        """Move the clock forward by hand (tests); timers that come due run on the next pass."""
        if seconds < 0:
            raise ValueError(f"the clock cannot go backwards (advance({seconds!r}))")
        self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0, debug: bool = False) -> T:
    """`asyncio.run` on a fresh `VirtualClockEventLoop`: returns the coroutine's result."""
    with asyncio.Runner(debug=debug, loop_factory=lambda: VirtualClockEventLoop(start)) as runner:
        return runner.run(main)
