"""The load model over the fleet table's columns: every candidate's predicted TTFT, decode
step and cost to the requests running there, as `load_model.candidate_times` computes them
from the states, read from `fleet_table.FleetTable`'s contiguous columns instead.

A router's plain (unpruned) path over fleet-table candidates calls it
(`routing.predicted.candidate_ttfts`); `routing.pruned_pick` repeats its arithmetic for the
candidates it predicts. The same Python operations in the same order as `load_model`, so the
same floats (tests/test_fleet_table.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sage_cp_plugin.fleet_table import FleetTable
from sage_cp_plugin.load_model import (
    PRIOR_DECODE_STEP_S,
    PRIOR_PREFILL_S_PER_TOKEN,
    scrape_correction,
)


def candidate_times(
    table: FleetTable, rows: Sequence[int], owns: Sequence[int], now: float
) -> tuple[list[float], list[float], list[float]]:
    """`load_model.candidate_times` for the candidates at `rows`, with uncached tokens
    `owns`: the same Python arithmetic in the same order (so the same floats), reading
    each candidate's numbers from the table's contiguous columns instead of half a dozen
    objects scattered in memory (between two decisions of a replay those are not in the
    CPU cache: a miss per object was most of a candidate's cost; numpy array operations
    were no cheaper at 64 candidates, their fixed cost being cold too). The scrape
    correction (`load_model.scrape_correction`) is evaluated for the few rows with one."""
    table.refresh_load()
    foreign, states, group_of_row = table.foreign, table.states, table.group_of_row
    queued_col, head_tokens_col, head_start_col = (
        table.queued_col, table.head_tokens_col, table.head_start_col
    )  # fmt: skip
    peer_col, chunk_col = table.peer_col, table.chunk_col
    seqs_col = table.seqs_col
    speeds = [
        (
            p.value if p.value is not None else PRIOR_PREFILL_S_PER_TOKEN / h,
            d.value if d.value is not None else PRIOR_DECODE_STEP_S / h,
        )
        for p, d, h in table.groups
    ]
    pst, step = speeds[0] if len(speeds) == 1 else (0.0, 0.0)
    ceil = math.ceil
    ttfts: list[float] = []
    steps: list[float] = []
    costs: list[float] = []
    for k, uncached in zip(rows, owns, strict=True):
        if len(speeds) > 1:
            pst, step = speeds[group_of_row[k]]
        chunk = chunk_col[k]
        ahead = queued_col[k]
        elapsed = now - head_start_col[k]  # -inf without a head: never drained
        if elapsed > 0:
            drained = elapsed / (pst + step / chunk)
            head_tokens = head_tokens_col[k]
            ahead = ahead - (drained if drained < head_tokens else head_tokens)
        residual = running = 0.0
        if foreign and k in foreign:
            residual, running = scrape_correction(states[k], now)
        own = uncached if uncached > 1 else 1
        tokens = (ahead if ahead > 0.0 else 0.0) + peer_col[k] + residual + own
        ttfts.append(tokens * pst + ceil(tokens / chunk) * step if tokens > 0 else 0.0)
        steps.append(step)
        costs.append((seqs_col[k] + running) * own * pst)
    return ttfts, steps, costs
