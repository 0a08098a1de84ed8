"""Waiting out a fleet outage instead of burning through a batch file.

Measured before: with the fleet down, every remaining line of a batch became an error
record in 0.2 s. Now a request that fails the way a down fleet fails (503: no healthy
instance or the coordinator unavailable; 500/502/504: engine error, unreachable, timed out) is
retried after an exponential backoff, for at most `max_wait_s` per request. A retry that
fails again while other requests succeeded during it is taken as the request's own failure
and recorded at once (the first failure is always retried: requests in flight when the
fleet goes down fail just after others' last successes). "No healthy instance" is never a
request's own failure: it describes the fleet, and a retry sent just before the fleet came
back fails that way while requests sent just after it succeed (a CI run lost two lines of a
batch to that race), so it is retried until the fleet answers or `max_wait_s` runs out. Each retry gets a fresh request id (the coordinator keeps ids of
finished requests, and a resent id would return the failed result).

`clock` and `sleep` are injectable, so tests run a 30 s outage in virtual time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .records import ResultRecord

# Failures of one request that a down fleet also produces; "stopped" (the coordinator
# itself is shutting down) is final.
_OUTAGE_STATUSES = frozenset({500, 502, 503, 504})
_FINAL_CODES = frozenset(
    {"stopped", "stopped_error", "internal_error", "model_not_found", "invalid_request",
     "invalid_request_error", "cancelled_error"}
)  # fmt: skip

# The record code of a request the coordinator could route nowhere (records.py: "<type>_error").
_FLEET_DOWN_CODE = "no_instance_error"

OnWait = Callable[[str, float, float], None]  # (reason, outage so far s, next retry in s)


def says_fleet_is_down(record: ResultRecord) -> bool:
    """The coordinator found no instance to route to: a statement about the fleet."""
    return record.error is not None and record.error.code == _FLEET_DOWN_CODE


def looks_like_outage(record: ResultRecord) -> bool:
    return (
        record.error is not None
        and record.status_code in _OUTAGE_STATUSES
        and record.error.code not in _FINAL_CODES
    )


@dataclass
class OutageBackoff:
    max_wait_s: float = 300.0
    base_s: float = 0.5
    cap_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_wait: OnWait | None = None
    # Observations (the job summary reports them).
    retries: int = 0
    waited_s: float = 0.0  # longest outage seen, from its first failure to its end
    _last_success: float = field(default=float("-inf"), repr=False)
    _down_since: float | None = field(default=None, repr=False)

    def _succeeded(self) -> None:
        now = self.clock()
        self._last_success = now
        if self._down_since is not None:
            self.waited_s = max(self.waited_s, now - self._down_since)
            self._down_since = None

    async def run(self, attempt: Callable[[int], Awaitable[ResultRecord]]) -> ResultRecord:
        """`attempt(n)` runs try n (0, 1, ...); returns the first success or final failure."""
        started = self.clock()
        for n in itertools.count():
            sent = self.clock()
            record = await attempt(n)
            if record.ok:
                self._succeeded()
                return record
            if not looks_like_outage(record):
                return record
            if n >= 1 and self._last_success > sent and not says_fleet_is_down(record):
                # Failed again while the fleet answered others: the request's own failure.
                # (Not on the first failure: requests in flight when the fleet went down
                # fail right after others' last successes.)
                return record
            now = self.clock()
            if self._down_since is None:
                self._down_since = now
            left = self.max_wait_s - (now - started)
            if left <= 0:
                return record
            delay = min(self.cap_s, self.base_s * 2**n, left)
            if self.on_wait is not None:
                message = record.error.message if record.error else "failed"
                self.on_wait(message, now - self._down_since, delay)
            self.retries += 1
            await self.sleep(delay)
        raise AssertionError("unreachable")
