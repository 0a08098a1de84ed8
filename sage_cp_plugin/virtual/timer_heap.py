"""The event loop's timer heap with comparisons in C, for replays.

asyncio keeps its timers (`call_at`, `call_later`, `asyncio.sleep`, timeouts) in a heap of
`TimerHandle`s ordered by `TimerHandle.__lt__`, a Python method: every push and pop calls it
~log2(timers) times, which is a visible share of a replay (a fleet of 256 simulated engines
keeps hundreds of timers; one run makes millions of comparisons). `PairTimerHeap` keeps
``(when, handle)`` pairs instead, compared by the tuple's C code.

The order is the same, to the tie: heapq decides only by ``<``, and for two pairs it gives
what the handles' own ``<`` gives -- different deadlines compare as floats; on equal
deadlines the tuple compares the handles, and `TimerHandle.__lt__` (on equal ``_when``) is
False, as the tuple's answer is then. So callbacks run in exactly the order, and on the
same virtual instants, as on the standard loop: replays stay identical. (On a tie the tuple
first asks ``==`` of the two handles, which compares their callbacks and arguments.)

`call_at` and `_run_once` are the standard library's (CPython 3.11) with the pairs, with
`Handle._run` inlined into `_run_once` (same call, same error report), and with
`_process_events` called only when the selector reported events (it only iterates over
them; the virtual clock's selector reports none on most passes); nothing else reads the heap.
"""

from __future__ import annotations

import heapq
from asyncio import base_events, events, format_helpers
from collections.abc import Callable
from contextvars import Context
from typing import Any

# The standard loop's private names used below (typed loosely: they are not in typeshed).
_std: Any = base_events


class PairTimerHeap(base_events.BaseEventLoop):
    """Mixin for a `BaseEventLoop` subclass: timers as ``(when, handle)`` pairs."""

    def next_timer_when(self) -> float | None:
        """Deadline of the earliest timer (cancelled or not), None without timers."""
        loop: Any = self
        return loop._scheduled[0][0] if loop._scheduled else None

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> events.TimerHandle:
        loop: Any = self
        if when is None:
            raise TypeError("when cannot be None")
        loop._check_closed()
        if loop._debug:
            loop._check_thread()
            loop._check_callback(callback, "call_at")
        timer: Any = events.TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        heapq.heappush(loop._scheduled, (timer._when, timer))
        timer._scheduled = True
        return timer  # type: ignore[no-any-return]

    def _run_once(self) -> None:
        loop: Any = self
        scheduled = loop._scheduled
        sched_count = len(scheduled)
        if (
            sched_count > _std._MIN_SCHEDULED_TIMER_HANDLES
            and loop._timer_cancelled_count / sched_count
            > _std._MIN_CANCELLED_TIMER_HANDLES_FRACTION
        ):
            # Remove delayed calls that were cancelled if their number is too high.
            kept = []
            for pair in scheduled:
                if pair[1]._cancelled:
                    pair[1]._scheduled = False
                else:
                    kept.append(pair)
            heapq.heapify(kept)
            loop._scheduled = scheduled = kept
            loop._timer_cancelled_count = 0
        else:
            # Remove delayed calls that were cancelled from the head of the queue.
            while scheduled and scheduled[0][1]._cancelled:
                loop._timer_cancelled_count -= 1
                heapq.heappop(scheduled)[1]._scheduled = False

        timeout = None
        if loop._ready or loop._stopping:
            timeout = 0
        elif scheduled:
            timeout = min(max(0, scheduled[0][0] - self.time()), _std.MAXIMUM_SELECT_TIMEOUT)

        event_list = loop._selector.select(timeout)
        if event_list:  # nothing to process on the passes a virtual clock does not poll
            loop._process_events(event_list)
        event_list = None  # breaks cycles when an exception occurs

        # Handle 'later' callbacks that are ready.
        end_time = self.time() + loop._clock_resolution
        ready = loop._ready
        while scheduled:
            if scheduled[0][0] >= end_time:
                break
            handle = heapq.heappop(scheduled)[1]
            handle._scheduled = False
            ready.append(handle)

        # The only place where callbacks are called; those they schedule run next pass.
        ntodo = len(ready)
        for _ in range(ntodo):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            if loop._debug:
                try:
                    loop._current_handle = handle
                    t0 = self.time()
                    handle._run()
                    dt = self.time() - t0
                    if dt >= self.slow_callback_duration:
                        _std.logger.warning(
                            "Executing %s took %.3f seconds", _std._format_handle(handle), dt
                        )
                finally:
                    loop._current_handle = None
            else:
                # `Handle._run` inlined (one Python frame less per callback, ~14 callbacks
                # per replayed request); its error report is `_report` below, unchanged.
                try:
                    handle._context.run(handle._callback, *handle._args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    _report(handle, exc)
        handle = None  # breaks cycles when an exception occurs


def _report(handle: Any, exc: BaseException) -> None:
    """What `Handle._run` does when its callback raises (CPython 3.11)."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)
