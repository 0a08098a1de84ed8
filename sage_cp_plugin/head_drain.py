"""A least tokens ahead for every instance that holds at any later time: one key per row.

`routing.pruned_pick` passes over a candidate after reading a number that bounds its tokens
ahead (queued prefill plus peers') from below. An instance with a prefill in progress (the
head request) drains it as time passes: the prediction takes `elapsed / rate` tokens off the
head (`rate`: seconds per drained token, the speed class's prefill time per token plus a
decode step per chunk; at most the head's tokens), so the tokens ahead fall with time and a
constant bound is either loose (the head fully drained: 0 for most instances of a replay at
70 % load, each running one or two requests) or valid only for a while.

A line is tight and holds at any time. While the decision's rate is at least a `floor`, the
tokens ahead at `now` are at least

    queued + peer - (now - t0) / floor,   t0 = min(head start, clock)

(the head drains no faster than `floor` allows, the clamps at the head's tokens and at 0 only
raise the prediction; without a head nothing drains and `clock`, a past decision's time, only
lowers it). Written as `key - now / floor` with `key = queued + peer + t0 / floor`, the key is
one number per row, set when the row is reread, and a decision compares it with its token
threshold shifted by `now / floor` (`threshold`): one comparison per candidate, no per-row
work as time passes. The bound is `1 - floor / rate` of the drained tokens below the exact
value (a tenth while the rate stays near where it was when the floor was set).

The floor is set below the rate seen (`FLOOR_SHARE`), so that small moves of the learned
speeds keep it; a decision at a lower rate (a faster drain), or at a time before the clock
(which a monotonic clock never gives), first rekeys every row. Rounding: the key and the
shifted threshold are each a few roundings from the real numbers, all of a relative size
under 1e-15; `threshold` adds a relative margin of 1e-9 (a row that close is checked exactly),
so a row passed over by its key is passed over by the exact test too.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Protocol

# The floor is this share of the rate seen when it is (re)set (see the module docstring).
FLOOR_SHARE = 0.9
# ... and is set again when it has fallen below this share of the rate (the learned speeds
# slowed down): the bound loses `1 - floor / rate` of the drained tokens.
STALE_SHARE = FLOOR_SHARE * FLOOR_SHARE
_INF = float("inf")
# Relative margin of a key and of a shifted threshold: far above their roundings (see the
# module docstring).
MARGIN = 1e-9


class LoadColumns(Protocol):
    """The columns of a `fleet_table.FleetTable` read here (and `key_col` written), one float
    per row. (A protocol, not the class: the table holds a `DrainKeys`, and naming the class
    here would make the two modules import each other.)"""

    key_col: array[float]
    queued_col: array[float]
    head_tokens_col: array[float]
    head_start_col: array[float]
    peer_col: array[float]


class DrainKeys:
    """Writes every row's key into the table's `key_col` (-inf until a floor is set: no row
    is passed over by its key)."""

    def __init__(self, table: LoadColumns) -> None:
        self.table = table
        self.floor = 0.0  # seconds per token; 0: no rate seen yet
        self.clock = -_INF  # the latest decision's time (keys hold from it on)

    def rekey(self, rows: Iterable[int]) -> None:
        """Rows reread: their keys from their queued tokens and their heads' starts, each
        lowered by its margin (see the module docstring)."""
        table, floor, clock = self.table, self.floor, self.clock
        key_col = table.key_col
        if floor == 0.0:
            for k in rows:
                key_col[k] = -_INF
            return
        queued_col, peer_col, start_col = table.queued_col, table.peer_col, table.head_start_col
        head_tokens_col = table.head_tokens_col
        for k in rows:
            t0 = start_col[k]  # inf without a head: the clock then
            if t0 > clock:
                t0 = clock
            tokens = queued_col[k] + peer_col[k]
            shift = t0 / floor
            key_col[k] = (tokens + shift) - MARGIN * (
                abs(tokens) + head_tokens_col[k] + abs(shift) + 1.0
            )

    def at(self, now: float, rate: float) -> None:
        """A decision at `now` and `rate`: rekey every row first when the keys would not hold
        (a rate below the floor, or time gone back) or are loose (a floor well below the
        rate), then keep `now` as the clock for the rows reread after this decision."""
        floor = self.floor
        moved = rate < floor or floor < rate * STALE_SHARE
        if moved or now < self.clock:
            if moved:
                self.floor = rate * FLOOR_SHARE
            self.clock = now  # `rekey` keys the rows from it
            self.rekey(range(len(self.table.key_col)))
        self.clock = now
