"""Which steady-state requests of a replay miss their SLO, and on which objective.

A goodput ratio says how many requests met every objective; it does not say whether the
others missed on their first token, their inter-token time or both, nor which requests miss.
This splits the steady-state requests (the same middle of the arrival span as the goodput) by
the objectives they carry and met, overall and by output length (a request with few output
tokens has its TPOT set by the prefills its decode steps share, a long one by the number of
sequences decoding beside it). Output-length buckets are powers of four: a reporting choice,
no decision reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_cp_plugin.virtual.runner import RequestOutcome
from sage_cp_plugin.virtual.steady import steady_interval

# Upper bounds (inclusive) of the output-length buckets, tokens.
BUCKETS = (16, 64, 256, 1024)
KINDS = ("met", "ttft_only", "tpot_only", "both")


def _bucket(tokens: int) -> str:
    lo = 1
    for hi in BUCKETS:
        if tokens <= hi:
            return f"{lo}-{hi}"
        lo = hi + 1
    return f">{BUCKETS[-1]}"


def slo_breakdown(
    outcomes: Sequence[RequestOutcome], slo_ttft_ms: float, slo_tpot_ms: float
) -> dict[str, Any]:
    """Counts of steady-state completed requests that met both objectives, missed only TTFT,
    only TPOT, or both; the same per output-length bucket (with each bucket's TPOT P50)."""
    if not outcomes:
        return {"requests": 0, "counts": dict.fromkeys(KINDS, 0), "by_output": {}}
    a, b = steady_interval(outcomes)
    counts = dict.fromkeys(KINDS, 0)
    by_out: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        if not (a <= o.arrival_s <= b) or o.state != "completed" or o.ttft_ms is None:
            continue
        ttft_miss = o.ttft_ms > slo_ttft_ms
        tpot_miss = o.tpot_ms is not None and o.tpot_ms > slo_tpot_ms
        kind = KINDS[int(ttft_miss) + 2 * int(tpot_miss)]
        counts[kind] += 1
        cell = by_out.setdefault(
            _bucket(o.completion_tokens), {"tpot": [], **dict.fromkeys(KINDS, 0)}
        )
        cell[kind] += 1
        if o.tpot_ms is not None:
            cell["tpot"].append(o.tpot_ms)
    for cell in by_out.values():
        tp = sorted(cell.pop("tpot"))
        cell["tpot_p50_ms"] = tp[len(tp) // 2] if tp else None
    order = [_bucket(hi) for hi in BUCKETS] + [f">{BUCKETS[-1]}"]
    return {
        "requests": sum(counts.values()),
        "counts": counts,
        "by_output": {k: by_out[k] for k in order if k in by_out},
    }
