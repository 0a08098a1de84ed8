"""`predicted.pick_lowest_ttft` over fleet-table candidates, predicting only the candidates
that can change the choice.

The same choice, candidate for candidate (tests/test_pruned_pick.py, tests/test_fleet_table.py):
the scan of `predicted.lowest_ttft_index` in the same rotation, with every prediction it uses
computed with `FleetTable.candidate_times`' arithmetic in the same order. What it skips is the
prediction of a candidate the scan would pass over, proved from two numbers read from the
table's buffer per candidate instead of a dozen:

* the scan takes a candidate only if its predicted TTFT is below the best's minus a step
  (`lo`), or at most the best's plus a step (`hi`) and its cost to the running requests is
  lower (or equal and its own prompt tokens fewer). A TTFT grows with the tokens ahead of the
  request (every operation of the prediction is monotone under IEEE rounding), so from the
  best so far follow two token thresholds: at or above `base_hi` a candidate's TTFT is above
  `hi`, at or above `base_lo` not below `lo`. Each is checked by evaluating the prediction
  at it, so rounding cannot make it wrong; it is recomputed when the best changes (a few
  times per decision).
* the table keeps, per instance, the least its tokens ahead (queued prefill plus peers') can
  be at any time (`BASE_LB`: with the prefill in progress fully drained), and its running
  sequences (`SEQS`): a cost grows with them.

A candidate whose least tokens reach `base_hi`, or reach `base_lo` while its sequences are at
least the best's (so its cost is not lower, and its own tokens, the whole prompt, are not
fewer), cannot be taken: the scan moves on without predicting it. The others (and any with a
cached prefix or a scrape correction) are predicted exactly. Fleets with more than one speed
class or chunk size take the plain path (`predicted.lowest_ttft_index`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sage_cp_plugin.base_index import BaseIndex
from sage_cp_plugin.fleet_table import (
    _COLUMNS,
    BASE_LB,
    HEAD,
    HEAD_START,
    HEAD_TOKENS,
    PEER,
    QUEUED,
    SEQS,
    Candidates,
    FleetTable,
)
from sage_cp_plugin.load_model import (
    PRIOR_DECODE_STEP_S,
    PRIOR_PREFILL_S_PER_TOKEN,
    scrape_correction,
)
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.rotation import rotation_start
from sage_cp_plugin.state import InstanceState


def pick_index(
    item: QueuedRequest, candidates: Candidates, cached: Sequence[int] | None, now: float
) -> int | None:
    """The index `predicted.lowest_ttft_index` would choose; None when the fleet has more
    than one speed class or chunk size (the caller takes the plain path)."""
    table = candidates.table
    table.refresh_load()
    chunk = table.one_chunk
    if chunk is None or len(table.groups) != 1:
        return None
    p, d, h = table.groups[0]
    pst = p.value if p.value is not None else PRIOR_PREFILL_S_PER_TOKEN / h
    step = d.value if d.value is not None else PRIOR_DECODE_STEP_S / h
    rows = candidates.row_list()
    n = len(rows)
    tokens = item.input_tokens
    # Candidates predicted whatever the thresholds say: a cached prefix (fewer own tokens)
    # or a scrape correction (tokens and sequences the lower bounds do not hold).
    hits: dict[int, int] = {}
    if cached is not None and any(cached):  # `any` at C speed: most requests hit nothing
        hits = {j: tokens - c for j, c in enumerate(cached) if c}
    foreign = table.foreign
    special = bool(hits) or not foreign.isdisjoint(rows)  # `isdisjoint` at C speed
    scan = _Scan(table, rows, hits if special else None, tokens, pst, step, chunk, now)
    start = rotation_start(item.seq, n, item.replica)  # as predicted.lowest_ttft_index
    scan.begin(start)

    # 1. The scan in its rotation, candidate by candidate, while many rows could still be
    #    taken (`_could_take`: read off the table's `BaseIndex`; rows of other pools count
    #    too, a safe overcount).
    bases = table.bases
    o = 1
    if len(_could_take(bases, scan)) > (n - o) // _CHEAPER:
        while o < n:
            j = start + o
            o += 1
            if scan.offer(j - n if j >= n else j) and (
                len(_could_take(bases, scan)) <= (n - o) // _CHEAPER
            ):
                break
    if o >= n:
        return scan.b

    # 2. The rest of the rotation (offsets o .. n-1): only the candidates that could be
    #    taken, in rotation order. Between two takes the scan's thresholds (base_hi, base_lo,
    #    seqs_at_least) are fixed; a candidate in that stretch that `_could_take` does not
    #    name for them has its tokens ahead at or above base_hi (its TTFT is above hi: not
    #    taken), or at or above base_lo with at least seqs_at_least sequences (not below lo
    #    and no cheaper: not taken). So the scan reads the rows named for the thresholds it
    #    starts with (and the special candidates); then each stretch between two takes is
    #    checked against the rows named for its own thresholds, and when one names a row
    #    the scan did not read, the scan is resumed from that stretch with it. When no
    #    stretch names a new row, the outcome is the full scan's.
    position = candidates.position()

    def offsets(named: list[int], begin: int, end: int) -> set[int]:
        out = set()
        for k in named:
            at = position.get(k)
            if at is not None:
                off = at - start
                if off < 0:
                    off += n
                if begin <= off < end:
                    out.add(off)
        return out

    read = offsets(_could_take(bases, scan), o, n)
    if special:
        read |= offsets([rows[at] for at in hits], o, n)
        read |= offsets([k for k in foreign if k in position], o, n)
    stretches = [(o, scan.save())]  # (first offset, the scan's state there)
    checked = 1  # stretches whose rows were named for their own thresholds
    todo = sorted(read)
    while True:
        for off in todo:
            j = start + off
            if scan.offer(j - n if j >= n else j):
                stretches.append((off + 1, scan.save()))
        new: set[int] = set()
        i = checked
        while i < len(stretches):
            begin, state = stretches[i]
            end = stretches[i + 1][0] if i + 1 < len(stretches) else n
            if begin < end:
                new = offsets(_could_take(bases, scan, state[6], state[7], state[8]), begin, end)
                new -= read
                if new:
                    break
            i += 1
        if not new:
            return scan.b
        read |= new
        begin, state = stretches[i]
        del stretches[i + 1 :]
        checked = i + 1
        scan.restore(state)
        todo = sorted(off for off in read if off >= begin)


def _could_take(
    bases: BaseIndex,
    scan: _Scan,
    x_hi: float | None = None,
    x_lo: float = 0.0,
    x_seqs: float = 0.0,
) -> list[int]:
    """Rows (of the whole table) that could be below the bounds: draining rows whose tokens
    ahead may be below x_hi, idle rows below x_lo or below x_hi with fewer than x_seqs
    sequences. Every row not named has tokens ahead >= x_hi, or >= x_lo and at least x_seqs
    sequences. Without bounds: the scan's own thresholds."""
    if x_hi is None:
        x_hi, x_lo, x_seqs = scan.base_hi, scan.base_lo, scan.seqs_at_least
    rows = bases.idle_rows(x_hi, x_lo, x_seqs)
    rows.extend(bases.draining_rows(x_hi, x_lo, x_seqs, scan.now, scan.rate))
    return rows


# Phase 1 hands over to phase 2 once the rows to read there are fewer than the positions
# left in the rotation divided by this (a row read off the index costs more than a candidate
# passed in the walk): a cost trade, not a routing constant; no decision depends on it.
_CHEAPER = 2


class _Scan:
    """The state of `predicted.lowest_ttft_index`'s scan (the best so far and the thresholds
    that follow from it), offered candidates one at a time."""

    __slots__ = (
        "b",
        "base_hi",
        "base_lo",
        "best_cost",
        "best_own",
        "best_t",
        "buf",
        "chunk",
        "foreign",
        "hi",
        "hits",
        "lo",
        "now",
        "pst",
        "rate",
        "rows",
        "seqs_at_least",
        "states",
        "step",
        "tokens",
        "whole",
    )  # fmt: skip

    def __init__(
        self,
        table: FleetTable,
        rows: list[int],
        hits: dict[int, int] | None,
        tokens: int,
        pst: float,
        step: float,
        chunk: float,
        now: float,
    ) -> None:
        self.buf, self.rows, self.hits, self.foreign = table._buffer, rows, hits, table.foreign
        self.states: list[InstanceState] = table.states
        self.tokens = tokens
        self.whole = tokens if tokens > 1 else 1  # own tokens (as predicted), nothing cached
        self.pst, self.step, self.chunk, self.now = pst, step, chunk, now
        self.rate = pst + step / chunk  # tokens drained per second by a prefill in progress

    def predict(self, j: int, own: int) -> tuple[float, float]:
        """(TTFT, cost) of candidate j: `FleetTable.candidate_times`' arithmetic."""
        buf, pst, step, chunk = self.buf, self.pst, self.step, self.chunk
        k = self.rows[j]
        at = k * _COLUMNS
        ahead = buf[at + QUEUED]
        elapsed = self.now - buf[at + HEAD_START]
        if elapsed > 0:
            drained = elapsed / (pst + step / chunk)
            head_tokens = buf[at + HEAD_TOKENS]
            ahead = ahead - (drained if drained < head_tokens else head_tokens)
        residual = running = 0.0
        if k in self.foreign:
            residual, running = scrape_correction(self.states[k], self.now)
        o = own if own > 1 else 1
        total = (ahead if ahead > 0.0 else 0.0) + buf[at + PEER] + residual + o
        t = total * pst + math.ceil(total / chunk) * step if total > 0 else 0.0
        return t, (buf[at + SEQS] + running) * o * pst

    def begin(self, b: int) -> None:
        """The scan's first candidate is its first best."""
        own = self.hits.get(b, self.tokens) if self.hits else self.tokens
        t, cost = self.predict(b, own)
        self._take(b, t, cost, own)

    def _take(self, j: int, t: float, cost: float, own: int) -> None:
        self.b, self.best_t, self.best_cost, self.best_own = j, t, cost, own
        self.lo, self.hi = t - self.step, t + self.step
        self.base_hi = self._least_base(self.hi, True)
        self.base_lo = self._least_base(self.lo, False)
        # Sequences from which a whole-prompt candidate's cost is not below the best's.
        self.seqs_at_least = _least_seqs(cost, self.whole, self.pst)

    def offer(self, j: int) -> bool:
        """The scan's step for candidate j; whether it became the best."""
        k = self.rows[j]
        hits = self.hits
        if hits is not None and (j in hits or k in self.foreign):
            own = hits.get(j, self.tokens)
            t, cost = self.predict(j, own)
        else:
            buf = self.buf
            at = k * _COLUMNS
            base = buf[at + BASE_LB]
            if base >= self.base_hi:
                return False
            if buf[at + HEAD]:  # a prefill in progress: its tokens ahead now, as predicted
                ahead = buf[at + QUEUED]
                elapsed = self.now - buf[at + HEAD_START]
                if elapsed > 0:
                    drained = elapsed / self.rate
                    head_tokens = buf[at + HEAD_TOKENS]
                    ahead = ahead - (drained if drained < head_tokens else head_tokens)
                base = (ahead if ahead > 0.0 else 0.0) + buf[at + PEER]
                if base >= self.base_hi:
                    return False
            seqs = buf[at + SEQS]
            if base >= self.base_lo and seqs >= self.seqs_at_least:
                return False
            own = self.tokens
            # `predict` from the base just computed (its residual is 0.0: x + 0.0 is x).
            total = base + self.whole
            t = total * self.pst + math.ceil(total / self.chunk) * self.step if total > 0 else 0.0
            cost = seqs * self.whole * self.pst
        if t < self.lo or (
            t <= self.hi
            and (cost < self.best_cost or (cost == self.best_cost and own < self.best_own))
        ):
            self._take(j, t, cost, own)
            return True
        return False

    def save(self) -> tuple[int, float, float, int, float, float, float, float, float]:
        return (
            self.b, self.best_t, self.best_cost, self.best_own, self.lo, self.hi,
            self.base_hi, self.base_lo, self.seqs_at_least,
        )  # fmt: skip

    def restore(
        self, saved: tuple[int, float, float, int, float, float, float, float, float]
    ) -> None:
        (
            self.b, self.best_t, self.best_cost, self.best_own, self.lo, self.hi,
            self.base_hi, self.base_lo, self.seqs_at_least,
        ) = saved  # fmt: skip

    def _least_base(self, target: float, strict: bool) -> float:
        """A base (tokens ahead) from which every whole-prompt TTFT is above `target`
        (`strict`) or at least it, checked by evaluating the prediction there."""
        pst, step, chunk, whole = self.pst, self.step, self.chunk, self.whole

        def ttft_at(base: float) -> float:
            total = base + whole
            return total * pst + math.ceil(total / chunk) * step if total > 0 else 0.0

        x = target / (pst + step / chunk) - whole  # TTFT >= tokens * (pst + step / chunk)
        if x < 0.0:
            x = 0.0
        bump = 1.0
        while not (ttft_at(x) > target if strict else ttft_at(x) >= target):
            x += bump
            bump *= 2.0
        return x


def _least_seqs(cost: float, own: int, pst: float) -> float:
    """Sequences from which `seqs * own * pst` (the cost of a candidate computing `own`
    tokens, no scrape correction) is at least `cost`, checked by evaluating it there."""
    s = math.floor(cost / (own * pst))
    while s * own * pst < cost:
        s += 1
    return float(s)
