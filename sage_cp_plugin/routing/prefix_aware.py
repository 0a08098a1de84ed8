"""Prefix-cache-aware routing: least predicted TTFT with the cached part of the prompt free.

Each candidate's predicted TTFT (`load_model`) counts only the prompt tokens it does not
already hold (`PrefixCacheView.cached_tokens`: approximate from what we sent, or exact from
vLLM's KV events). The instance holding a hot prefix wins while the prefill queued on it
costs less than recomputing the prefix elsewhere; once it costs more, another instance wins
and the prefix is replicated there, so one prefix never saturates one instance. Both sides
of that trade are seconds: no weight or threshold to tune (SGLang's cache-aware router
needs two balance thresholds for the same decision).

Predicted TTFTs tie within one decode step measured against the request's TPOT objective
(`routing.tie_tolerance`; the default `score="ttft_headroom"`), and ties go to the candidate
whose running sequences the prefill delays least: near the TPOT objective a request gives up
some of its own TTFT (never past its TTFT objective) to spare them. `score="ttft"` keeps the
former tie of one decode step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.added_latency import (
    lowest_added_latency_index,
    lowest_added_latency_within_slack_index,
)
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.predicted import candidate_ttfts, pick_lowest_ttft
from sage_cp_plugin.routing.tie_tolerance import tie_tolerance
from sage_cp_plugin.state import FleetSnapshot, InstanceState

# Options of the former score (`matched - load_weight * load`), accepted so existing
# configuration files keep loading; the predicted-TTFT score has no use for them.
_RETIRED = frozenset(
    {"chunk_chars", "max_chunks", "load_weight", "balance_abs_threshold", "max_entries"}
)


# What a candidate is scored by: the request's own predicted TTFT, with ties within one decode
# step (`ttft`) or within that step measured against the TPOT objective's headroom
# (`ttft_headroom`, the default: `routing/tie_tolerance.py`); or that TTFT plus the delay its
# prefill adds to the sequences running there (`routing/added_latency.py`), or that only among
# candidates predicted to meet the request's TTFT objective (`added_latency_slack`).
SCORES = ("ttft", "added_latency", "added_latency_slack", "ttft_headroom")


class PrefixAwareRouter(Router):
    name = "prefix_aware"

    def __init__(self, score: str = "ttft_headroom", **options: Any) -> None:
        unknown = sorted(set(options) - _RETIRED)
        if unknown:
            raise TypeError(f"unexpected options for router {self.name!r}: {unknown}")
        if score not in SCORES:
            raise ValueError(
                f"router {self.name!r}: score must be one of {', '.join(SCORES)}, not {score!r}"
            )
        super().__init__()
        self.score = score

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        view = fleet.cache_view
        cached = view.cached_tokens(item, candidates) if view is not None else None
        if self.score == "added_latency":
            times = candidate_ttfts(item, candidates, cached, fleet.now)
            return candidates[lowest_added_latency_index(item, times)]
        if self.score == "added_latency_slack":
            times = candidate_ttfts(item, candidates, cached, fleet.now)
            return candidates[lowest_added_latency_within_slack_index(item, times, fleet.now)]
        if self.score == "ttft_headroom":
            return pick_lowest_ttft(item, candidates, cached, fleet.now, tie_tolerance)
        return pick_lowest_ttft(item, candidates, cached, fleet.now)
