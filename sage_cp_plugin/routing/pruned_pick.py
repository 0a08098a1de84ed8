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
  be at any time (`base_lb_col`: with the prefill in progress fully drained), and its running
  sequences (`seqs_col`): a cost grows with them.

A candidate whose least tokens reach `base_hi`, or reach `base_lo` while its sequences are at
least the best's (so its cost is not lower, and its own tokens, the whole prompt, are not
fewer), cannot be taken: the scan moves on without predicting it. The others (and any with a
cached prefix or a scrape correction) are predicted exactly. Fleets with more than one speed
class or chunk size take the plain path (`predicted.lowest_ttft_index`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sage_cp_plugin.fleet_table import (
    _COLUMNS,
    HEAD_START,
    HEAD_TOKENS,
    PEER,
    QUEUED,
    Candidates,
)
from sage_cp_plugin.load_model import (
    PRIOR_DECODE_STEP_S,
    PRIOR_PREFILL_S_PER_TOKEN,
    scrape_correction,
)
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.rotation import rotation_start


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
    buf, foreign, states = table._buffer, table.foreign, table.states
    # The three numbers read of every candidate, from the table's contiguous columns.
    base_lb_col, seqs_col, head_col = table.base_lb_col, table.seqs_col, table.head_col
    rows = candidates.row_list
    n = len(rows)
    tokens = item.input_tokens
    ceil = math.ceil

    def predict(k: int, own: int) -> tuple[float, float]:
        """(TTFT, cost) of the candidate at row k: `FleetTable.candidate_times`' arithmetic."""
        at = k * _COLUMNS
        ahead = buf[at + QUEUED]
        elapsed = now - buf[at + HEAD_START]
        if elapsed > 0:
            drained = elapsed / (pst + step / chunk)
            head_tokens = buf[at + HEAD_TOKENS]
            ahead = ahead - (drained if drained < head_tokens else head_tokens)
        residual = running = 0.0
        if foreign and k in foreign:
            residual, running = scrape_correction(states[k], now)
        o = own if own > 1 else 1
        total = (ahead if ahead > 0.0 else 0.0) + buf[at + PEER] + residual + o
        t = total * pst + ceil(total / chunk) * step if total > 0 else 0.0
        return t, (seqs_col[k] + running) * o * pst

    # Candidates predicted whatever the thresholds say: a cached prefix (fewer own tokens)
    # or a scrape correction (tokens and sequences the lower bounds do not hold).
    hits: dict[int, int] = {}
    if cached is not None and any(cached):  # `any` at C speed: most requests hit nothing
        hits = {j: tokens - c for j, c in enumerate(cached) if c}
    whole = tokens if tokens > 1 else 1  # own tokens (as predicted) without a cached prefix

    def ttft_at(base: float) -> float:
        total = base + whole
        return total * pst + ceil(total / chunk) * step if total > 0 else 0.0

    def least_base(target: float, strict: bool) -> float:
        """A base (tokens ahead) from which every TTFT is above `target` (`strict`) or at
        least it, checked by evaluating the prediction there."""
        x = target / (pst + step / chunk) - whole  # TTFT >= tokens * (pst + step / chunk)
        if x < 0.0:
            x = 0.0
        bump = 1.0
        while not (ttft_at(x) > target if strict else ttft_at(x) >= target):
            x += bump
            bump *= 2.0
        return x

    start = rotation_start(item.seq, n, item.replica)  # as predicted.lowest_ttft_index
    b = start
    best_own = hits.get(b, tokens)
    best_t, best_cost = predict(rows[b], best_own)
    base_hi = least_base(best_t + step, True)
    base_lo = least_base(best_t - step, False)
    # Sequences from which a whole-prompt candidate's cost is not below the best's.
    seqs_at_least = _least_seqs(best_cost, whole, pst)
    lo, hi = best_t - step, best_t + step
    rate = pst + step / chunk  # tokens drained per second by a prefill in progress
    # Rows the bounds do not cover, if any (`isdisjoint` at C speed), with their own tokens:
    # keyed by row, so the loop keeps no position (a taken row's is found by `index`).
    special: dict[int, int] = {}
    if hits or not foreign.isdisjoint(rows):
        special = dict.fromkeys(foreign.intersection(rows), tokens)
        for j, own in hits.items():
            special[rows[j]] = own
    for k in rows[start + 1 :] + rows[:start]:  # the rotation after the first
        if special and k in special:
            own = special[k]
            t, cost = predict(k, own)
        else:
            base = base_lb_col[k]
            if base >= base_hi:
                continue
            seqs = seqs_col[k]
            # Tested on the least tokens ahead before the prefill in progress is drained:
            # its tokens ahead now are at least that, so a row passed here would be passed
            # below too (most rows with a prefill in progress go here, for 8 operations).
            if base >= base_lo and seqs >= seqs_at_least:
                continue
            if head_col[k]:  # a prefill in progress: its tokens ahead now, as predicted
                at = k * _COLUMNS
                ahead = buf[at + QUEUED]
                elapsed = now - buf[at + HEAD_START]
                if elapsed > 0:
                    drained = elapsed / rate
                    head_tokens = buf[at + HEAD_TOKENS]
                    ahead = ahead - (drained if drained < head_tokens else head_tokens)
                base = (ahead if ahead > 0.0 else 0.0) + buf[at + PEER]
                if base >= base_hi or (base >= base_lo and seqs >= seqs_at_least):
                    continue
            own = tokens
            # `predict` from the base just computed (its residual is 0.0: x + 0.0 is x).
            total = base + whole
            t = total * pst + ceil(total / chunk) * step if total > 0 else 0.0
            cost = seqs * whole * pst
        if t < lo or (t <= hi and (cost < best_cost or (cost == best_cost and own < best_own))):
            b, best_t, best_cost, best_own = rows.index(k), t, cost, own
            lo, hi = t - step, t + step
            base_hi = least_base(hi, True)
            base_lo = least_base(lo, False)
            seqs_at_least = _least_seqs(best_cost, whole, pst)
    return b


def _least_seqs(cost: float, own: int, pst: float) -> float:
    """Sequences from which `seqs * own * pst` (the cost of a candidate computing `own`
    tokens, no scrape correction) is at least `cost`, checked by evaluating it there."""
    s = math.floor(cost / (own * pst))
    while s * own * pst < cost:
        s += 1
    return float(s)
