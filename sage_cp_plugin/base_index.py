"""Instances ordered by how low their tokens ahead can be at any later time, so a decision
finds the few candidates below a bound without reading every row.

`routing.pruned_pick` needs, per decision, the candidates whose tokens ahead of a new request
(`base`: uncached prefill queued plus peers', with the prefill in progress drained for the
time it has run) are below a bound `x`; every other candidate is provably not taken. A row's
base falls with time while its head request is prefilled, at one rate for the whole fleet
(`r`, seconds per token: `prefill_s_per_token + decode_step_s / chunk`, learnt online, so
it moves a little with every first token). Two sorted lists, kept by `FleetTable.refresh_load`
for the rows it rereads (a bisection and a list insertion per row, both at C speed):

* `idle`: rows without a prefill in progress, keyed by their base and then their running
  sequences (neither changes while nothing is written to the instance), so the rows of one
  base with fewer sequences than a bound are a bisection away (most idle rows have base 0);
* `draining`: rows with one, keyed by `head_start + rho * (queued + peer)`. Its base is at
  least `queued + peer - (now - head_start) / r` (the head drains no faster than that; it
  stops at the head's size, which only raises the base), so `base < x` needs
  `head_start + r * (queued + peer) < now + r * x`; while `r >= rho` the key is at most the
  left side. So every row with `base < x` has key `< now + r * x`. `rho` is the rate at the
  last re-keying: when the fleet's rate falls below it, or rises far enough above it that
  the keys stop telling rows apart, every draining row is re-keyed (`rekey`, O(rows log
  rows), rare).

A candidate outside both prefixes has `base >= x`; the converse need not hold (the lists are
a superset test; the caller predicts the rows they name exactly).
"""

from __future__ import annotations

from bisect import bisect_left, insort

# Margin on the draining keys, seconds: covers the rounding of `head_start + rho * tokens`
# and of the prediction's own arithmetic (both ulps of seconds-sized numbers), so a row the
# lists leave out has a computed base at or above the bound, not only a real-valued one.
_SLACK_S = 1e-6
# Re-key when the rate has risen this much above `rho` (each key then overstates how low a
# row can get by up to that share of its queue): a cost trade, no decision depends on it.
_DRIFT = 0.1
_INF = float("inf")


class BaseIndex:
    def __init__(self, rows: int) -> None:
        self.idle: list[tuple[float, float, int]] = []
        self.draining: list[tuple[float, int, float, float]] = []
        # Per row: (draining?, key) of its entry, or None before its first refresh; and for
        # draining rows the (head_start, queued + peer) the key was made from.
        self._entry: list[tuple[bool, tuple[float, ...]] | None] = [None] * rows
        self._drain: dict[int, tuple[float, float, float, float]] = {}
        self.rho = 0.0

    def update(
        self,
        row: int,
        draining: bool,
        head_start: float,
        tokens: float,
        seqs: float,
        least: float,
    ) -> None:
        """The row's base now: `tokens` (idle), or `tokens` (queued + peers') less what its
        head, started at `head_start`, has drained since, and never below `least` (its
        `BASE_LB`: the head fully drained) (draining); `seqs`: its running sequences."""
        entry = (
            (head_start + self.rho * tokens, row, seqs, least) if draining else (tokens, seqs, row)
        )
        old = self._entry[row]
        if old is not None:
            if old == (draining, entry):
                return
            listed: list = self.draining if old[0] else self.idle  # type: ignore[type-arg]
            del listed[bisect_left(listed, old[1])]
        if draining:
            insort(self.draining, entry)  # type: ignore[arg-type]
        else:
            insort(self.idle, entry)  # type: ignore[arg-type]
        self._entry[row] = (draining, entry)
        if draining:
            self._drain[row] = (head_start, tokens, seqs, least)
        else:
            self._drain.pop(row, None)

    def draining_rows(
        self, x_hi: float, x_lo: float, seqs_below: float, now: float, r: float
    ) -> list[int]:
        """Draining rows whose base at `now` (rate `r`) may be below `x_lo`, or below `x_hi`
        with fewer sequences than `seqs_below`; every other draining row has base >= x_hi,
        or base >= x_lo and at least `seqs_below` sequences."""
        if r < self.rho or r > self.rho * (1.0 + _DRIFT):
            self.rekey(r)
        draining = self.draining
        hi = bisect_left(draining, (now + r * x_hi + _SLACK_S,))
        lo = bisect_left(draining, (now + r * x_lo + _SLACK_S,), 0, hi) if x_lo < x_hi else hi
        rows = [e[1] for e in draining[:lo] if e[3] < x_lo or (e[3] < x_hi and e[2] < seqs_below)]
        rows.extend([e[1] for e in draining[lo:hi] if e[3] < x_hi and e[2] < seqs_below])
        return rows

    def idle_rows(self, x_hi: float, x_lo: float, seqs_below: float) -> list[int]:
        """Idle rows with base < `x_lo`, or base < `x_hi` and fewer sequences than
        `seqs_below`; every other idle row has base >= x_hi, or base >= x_lo and at least
        `seqs_below` sequences."""
        idle = self.idle
        end = bisect_left(idle, (x_hi,))
        at = bisect_left(idle, (x_lo,))
        rows = [e[2] for e in idle[:at]]
        while at < end:  # runs of one base, each sorted by sequences
            base = idle[at][0]
            stop = bisect_left(idle, (base, seqs_below), at, end)
            rows.extend(e[2] for e in idle[at:stop])
            at = bisect_left(idle, (base, _INF), stop, end)
        return rows

    def rekey(self, r: float) -> None:
        """Key every draining row anew, with `rho` a little below `r` (the keys' bound holds
        while the fleet's rate stays at or above `rho`: small moves either way need none)."""
        self.rho = r = r / (1.0 + _DRIFT / 2)
        entry, drain = self._entry, self._drain
        keyed = []
        for row, (start, tokens, seqs, least) in drain.items():
            e = (start + r * tokens, row, seqs, least)
            entry[row] = (True, e)
            keyed.append(e)
        keyed.sort()
        self.draining = keyed
