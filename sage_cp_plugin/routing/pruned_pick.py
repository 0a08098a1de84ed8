"""`predicted.pick_lowest_ttft` over fleet-table candidates, predicting only the candidates
that can change the choice.

The same choice, candidate for candidate (tests/test_pruned_pick.py, tests/test_fleet_table.py):
the scan of `predicted.lowest_ttft_index` in the same rotation, with every prediction it uses
computed with `table_times.candidate_times`' arithmetic in the same order. What it skips is the
prediction of a candidate the scan would pass over, proved from two numbers read from the
table's columns per candidate instead of a dozen:

* the scan takes a candidate only if its predicted TTFT is below the best's minus the tie
  tolerance (`lo`; a decode step, or what `tie` makes of it), or at most the best's plus it
  (`hi`) and its cost to the running requests is lower (or equal and its own prompt tokens
  fewer). A TTFT grows with the tokens ahead of the
  request, and is at least those tokens times the drain rate (a chunk's decode step is
  counted whole), so from the best so far follow two token thresholds in closed form: at or
  above `base_hi` a candidate's TTFT is above `hi`, at or above `base_lo` not below `lo`
  (raised by a relative margin of 1e-9, far above the prediction's rounding). They are
  recomputed when the best changes (a few times per decision).
* the table keeps, per instance, two lower bounds of its tokens ahead (queued prefill plus
  peers'): the one with the prefill in progress fully drained (`least_col`), and a key
  (`key_col`, `head_drain`) from which the bound with the head drained no faster than a floor
  rate since it started follows at any later time, compared with the thresholds shifted by
  `now / floor`; and its running sequences (`seqs_col`): a cost grows with them.

A candidate whose least tokens reach `base_hi`, or reach `base_lo` while its sequences are at
least the best's (so its cost is not lower, and its own tokens, the whole prompt, are not
fewer), cannot be taken: the scan moves on without predicting it. The others are predicted
exactly; so are candidates with a cached prefix (fewer own tokens than the thresholds
assume), where the scan stops between runs of rows. A scrape correction only adds tokens
ahead and sequences: such a row is passed over by the same tests, and predicted with its
correction. Fleets with more than one speed class or chunk size take the plain path
(`predicted.lowest_ttft_index`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from sage_cp_plugin.fleet_table import Candidates
from sage_cp_plugin.head_drain import MARGIN
from sage_cp_plugin.load_model import (
    PRIOR_DECODE_STEP_S,
    PRIOR_PREFILL_S_PER_TOKEN,
    scrape_correction,
)
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.rotation import rotation_start


def pick_index(
    item: QueuedRequest,
    candidates: Candidates,
    cached: Sequence[int] | None,
    now: float,
    tie: Callable[[QueuedRequest, float], float] | None = None,
) -> int | None:
    """The index `predicted.lowest_ttft_index` would choose (with the same `tie`); None when
    the fleet has more than one speed class or chunk size (the caller takes the plain path)."""
    table = candidates.table
    table.refresh_load()
    chunk = table.one_chunk
    if chunk is None or len(table.groups) != 1:
        return None
    p, d, h = table.groups[0]
    pst = p.value if p.value is not None else PRIOR_PREFILL_S_PER_TOKEN / h
    step = d.value if d.value is not None else PRIOR_DECODE_STEP_S / h
    rate = pst + step / chunk  # seconds per token drained of a prefill in progress
    tol = tie(item, step) if tie is not None else step  # TTFTs this close tie
    # So that every row's key holds now (`DrainKeys.at`: rekeys every row only when the
    # rate falls below its floor).
    keys = table.drain_keys
    keys.at(now, rate)
    shift = now / keys.floor  # a key is compared with tokens shifted by this
    pad = (shift if shift > 0.0 else -shift) + 1.0  # with a margin of MARGIN * (tokens + pad)
    foreign, states = table.foreign, table.states
    # The numbers read of every candidate, from the table's contiguous columns; and
    # those of its exact tokens ahead.
    least_col, key_col, seqs_col = table.least_col, table.key_col, table.seqs_col
    queued_col, head_tokens_col = table.queued_col, table.head_tokens_col
    head_start_col, peer_col = table.head_start_col, table.peer_col
    rows = candidates.row_list
    n = len(rows)
    tokens = item.input_tokens
    whole = tokens if tokens > 1 else 1  # own tokens (as predicted) without a cached prefix
    ceil = math.ceil

    def predict(k: int, own: int) -> tuple[float, float]:
        """(TTFT, cost) of the candidate at row k: `table_times.candidate_times`' arithmetic."""
        ahead = queued_col[k]
        elapsed = now - head_start_col[k]
        if elapsed > 0:
            drained = elapsed / rate
            head_tokens = head_tokens_col[k]
            ahead = ahead - (drained if drained < head_tokens else head_tokens)
        residual = running = 0.0
        if foreign and k in foreign:
            residual, running = scrape_correction(states[k], now)
        o = own if own > 1 else 1
        total = (ahead if ahead > 0.0 else 0.0) + peer_col[k] + residual + o
        t = total * pst + ceil(total / chunk) * step if total > 0 else 0.0
        return t, (seqs_col[k] + running) * o * pst

    # Tokens per second of TTFT, raised by a relative margin far above the prediction's
    # rounding (see `thresholds`).
    per_s = (1.0 + MARGIN) / rate

    def thresholds(t: float) -> tuple[float, float, float, float, float, float]:
        """For a best with TTFT `t`: the scan's bounds `lo` and `hi`, the tokens ahead
        (bases) from which a whole-prompt candidate's TTFT is not below `lo` and is above
        `hi`, and the keys those bases are at (`head_drain`). A TTFT is at least its tokens
        times `rate` (a chunk's decode step is counted whole: ceil(x) >= x), so tokens
        ahead of `lo / rate - whole` (`hi / rate - whole`) put it at `lo` (`hi`) or above;
        the prediction's float operations are a few roundings (each under 1.2e-16 of the
        value) from the real numbers, which the margin of `per_s` (1e-9) covers; at the
        clamp to 0 the whole prompt alone reaches the bound. (When `lo` is below 0 no TTFT
        is below it.)"""
        lo, hi = t - tol, t + tol
        base_lo = lo * per_s - whole
        if base_lo < 0.0:
            base_lo = 0.0
        base_hi = hi * per_s - whole
        if base_hi < 0.0:
            base_hi = 0.0
        key_lo = (base_lo + shift) + MARGIN * (base_lo + pad)
        return lo, hi, base_lo, base_hi, key_lo, (base_hi + shift) + MARGIN * (base_hi + pad)

    per_seq = whole * pst  # a whole-prompt candidate's cost per running sequence

    def least_seqs(cost: float) -> float:
        """The sequences from which a whole-prompt candidate's cost is not below `cost`.
        (For a best that is itself a whole-prompt candidate without a scrape correction,
        cost = (seqs * whole) * pst, that is its own `seqs`: the scan uses them directly.)"""
        seqs = math.floor(cost / per_seq)
        while seqs * whole * pst < cost:  # as the cost is computed: (seqs * whole) * pst
            seqs += 1
        return float(seqs)

    # Candidates with a cached prefix (fewer own tokens than the bounds assume) are predicted
    # whatever the thresholds say: the scan stops at each (`stops`: their places in the
    # rotation), so that between them no row is looked up. Most requests hit nothing.
    hits: dict[int, int] = {}
    if cached is not None and any(cached):  # `any` at C speed
        hits = {j: tokens - c for j, c in enumerate(cached) if c}
    start = rotation_start(item.seq, n, item.replica)  # as predicted.lowest_ttft_index
    # The best is tracked by its row (`best_k`): the scan walks rows; its index among the
    # candidates is looked up once, at the end.
    best_k = rows[start]
    best_own = hits.get(start, tokens)
    best_t, best_cost = predict(best_k, best_own)
    lo, hi, base_lo, base_hi, key_lo, key_hi = thresholds(best_t)
    seqs_at_least = least_seqs(best_cost)
    order = rows[start + 1 :] + rows[:start]  # the rotation after the first
    if hits:
        stops = sorted((j - start - 1) % n for j in hits if j != start)
        stops.append(n - 1)  # the end
    else:
        stops = [n - 1]
    begin = 0
    for stop in stops:
        for k in order if stop == n - 1 and not begin else order[begin:stop]:
            # Its tokens ahead now are at least what its key and its fully drained bound
            # give: a row passed here would be passed below too (most rows are passed by
            # the key, after 6 operations).
            if key_col[k] >= key_hi:
                continue
            full = least_col[k]
            if full >= base_hi:
                continue
            seqs = seqs_col[k]
            if (full >= base_lo or key_col[k] >= key_lo) and seqs >= seqs_at_least:
                continue
            ahead = queued_col[k]  # its tokens ahead now, as predicted
            elapsed = now - head_start_col[k]  # -inf without a prefill in progress
            if elapsed > 0:
                drained = elapsed / rate
                head_tokens = head_tokens_col[k]
                ahead = ahead - (drained if drained < head_tokens else head_tokens)
            base = (ahead if ahead > 0.0 else 0.0) + peer_col[k]
            if base >= base_hi or (base >= base_lo and seqs >= seqs_at_least):
                continue
            if foreign and k in foreign:
                # A scrape correction adds tokens ahead and sequences (never removes them):
                # the bounds above hold, the prediction needs the correction.
                t, cost = predict(k, tokens)
                least = -1.0  # (computed from the cost if it is taken)
            else:
                # `predict` from the base just computed (its residual is 0.0: x + 0.0 is x).
                total = base + whole
                t = total * pst + ceil(total / chunk) * step if total > 0 else 0.0
                cost = seqs * whole * pst
                least = seqs
            # Its own tokens (the whole prompt) are never fewer than the best's: an equal
            # cost does not take it.
            if t < lo or (t <= hi and cost < best_cost):
                best_k, best_t, best_cost, best_own = k, t, cost, tokens
                lo, hi, base_lo, base_hi, key_lo, key_hi = thresholds(t)
                seqs_at_least = least if least >= 0.0 else least_seqs(cost)
        if stop < n - 1:  # a candidate with a cached prefix
            j = (start + 1 + stop) % n
            own = hits[j]
            k = rows[j]
            t, cost = predict(k, own)
            if t < lo or (t <= hi and (cost < best_cost or (cost == best_cost and own < best_own))):
                best_k, best_t, best_cost, best_own = k, t, cost, own
                lo, hi, base_lo, base_hi, key_lo, key_hi = thresholds(t)
                seqs_at_least = least_seqs(cost)
        begin = stop + 1
    return rows.index(best_k)
