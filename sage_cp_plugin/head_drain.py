"""A tighter least tokens ahead for instances with a prefill in progress, valid for a time.

`routing.pruned_pick` passes over a candidate after reading the least its tokens ahead can be
(`FleetTable.base_lb_col`). For an instance with a prefill in progress (the head request),
the bound that holds at any time is the one with the head fully drained. In the replays most
instances have a head (a large fleet at 70 % load runs one or two requests on each), that
bound is then 0 for nearly all of them, and each was predicted exactly: at 256 instances
about 70 candidates per decision, the larger part of its work.

The prediction drains the head's tokens at `elapsed / rate` (`rate`: seconds per drained
token, the speed class's prefill time per token plus a decode step per chunk). While at most
half of them can have drained, the tokens ahead are at least those with half drained. So a
row with a head keeps that bound until the time at which half would have drained at the
floor rate (`floor`), and then the fully drained bound, which holds at any time. The bound
holds only while the decision's rate is at least the floor: a decision at a lower rate (a
faster drain) first lowers the floor and bounds every row again. The floor is set below the
rate seen (`FLOOR_SHARE`) so that small moves of the learned speeds do not do that at every
decision (in the replays it happens two or three times per run); how far below changes how
long a bound lasts, never a decision.

Each step uses the prediction's own float operations, all monotone under IEEE rounding: the
time is moved back until `(until - start) / floor` is at most half the head's tokens `x`, so
at any `now <= until` and rate >= floor the prediction drains at most `x`, and
`max(queued - x, 0) + peer` is at most the tokens ahead it computes.
"""

from __future__ import annotations

import heapq
import math
from array import array
from typing import Protocol

# The floor is this share of the rate seen when it is (re)set (see the module docstring).
FLOOR_SHARE = 0.9
_INF = float("inf")


class LoadColumns(Protocol):
    """The columns of a `fleet_table.FleetTable` read here (and `base_lb_col` written),
    one float per row. (A protocol, not the class: the table holds a `HeadDrainBounds`, and
    naming the class here would make the two modules import each other.)"""

    base_lb_col: array[float]
    head_col: array[float]
    queued_col: array[float]
    head_tokens_col: array[float]
    head_start_col: array[float]
    peer_col: array[float]


class HeadDrainBounds:
    """Per row of a `FleetTable`: until when its half-drained bound holds (`until`, inf for a
    row with its fully drained bound), and a heap of (until, row) to replace the bounds whose
    time has passed. Writes the bounds into the table's `base_lb` column."""

    def __init__(self, table: LoadColumns) -> None:
        self.table = table  # its columns are read, and its `base_lb_col` written
        self.floor = 0.0  # 0: no rate seen yet, every row keeps its fully drained bound
        self.until = array("d", [_INF]) * len(table.base_lb_col)
        self.heap: list[tuple[float, int]] = []

    def start(self, k: int) -> None:
        """Row k was reread: bound it by half the head's tokens drained when it has a
        prefill in progress and a floor is set, else by the head fully drained (the bound
        that holds at any time)."""
        table = self.table
        if not (table.head_col[k] and self.floor > 0.0):
            self.until[k] = _INF
            _write_bound(table, k, table.head_tokens_col[k])
            return
        x = table.head_tokens_col[k] * 0.5
        start, floor = table.head_start_col[k], self.floor
        until = start + x * floor
        while until > start and (until - start) / floor > x:
            until = math.nextafter(until, -_INF)
        _write_bound(table, k, x)
        self.until[k] = until
        heapq.heappush(self.heap, (until, k))

    def at(self, now: float, rate: float) -> None:
        """Make every row's bound hold at `now` for a decision at `rate` (seconds per drained
        token of the one speed class): below the floor, lower it and bound every row again;
        then give the rows whose time has passed their fully drained bound."""
        if rate < self.floor or (self.floor == 0.0 and rate > 0.0):
            self.floor = rate * FLOOR_SHARE
            self.heap = []
            for k in range(len(self.until)):
                self.start(k)
        heap, until_of, table = self.heap, self.until, self.table
        while heap and heap[0][0] < now:
            until, k = heapq.heappop(heap)
            if until_of[k] == until:  # else reread since: a newer entry stands for the row
                until_of[k] = _INF
                _write_bound(table, k, table.head_tokens_col[k])


def _write_bound(table: LoadColumns, k: int, drained: float) -> None:
    """Row k's least tokens ahead with `drained` of its head's tokens gone: `candidate_times`'
    (ahead if ahead > 0 else 0.0) + peer, by the same operations (each monotone, so with
    the head fully drained it is the prediction's value now or lower)."""
    lowest = table.queued_col[k] - drained
    table.base_lb_col[k] = (lowest if lowest > 0.0 else 0.0) + table.peer_col[k]
