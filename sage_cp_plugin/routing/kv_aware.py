"""KV-aware routing: predicted TTFT with the cached prompt free, and KV room respected.

Like `prefix_aware` (least predicted TTFT, cached tokens from the fleet's `PrefixCacheView`,
exact when the engines publish KV events), plus the engine's KV cache: a candidate whose
KV would overflow with this request (our decodes' footprint, or vLLM's reported
`kv_cache_usage_perc` when fresh and higher) would have to wait for running requests to
finish or preempt one, so it is taken only when every candidate would overflow. Predicted
TTFTs tie by `prefix_aware`'s rule (`routing.tie_tolerance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_cp_plugin.fleet_table import Candidates, with_rows
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.cache_view import kv_capacity_tokens
from sage_cp_plugin.routing.predicted import pick_lowest_ttft
from sage_cp_plugin.routing.tie_tolerance import tie_tolerance
from sage_cp_plugin.state import FleetSnapshot, InstanceState

_RETIRED = frozenset({"kv_weight", "waiting_weight", "inflight_weight"})


def kv_room(state: InstanceState, tokens: int) -> bool:
    """Whether `tokens` more fit in the instance's KV cache (unknown capacity: yes)."""
    cap = kv_capacity_tokens(state)
    if cap is None:
        return not (state.scraped.fresh and state.scraped.kv_usage >= 1.0)
    used: float = state.decode_kv_tokens + state.prefill_tokens_queued
    if state.scraped.fresh:
        used = max(used, state.scraped.kv_usage * cap)
    return used + tokens <= cap


class KVAwareRouter(Router):
    name = "kv_aware"

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - _RETIRED)
        if unknown:
            raise TypeError(f"unexpected options for router {self.name!r}: {unknown}")
        super().__init__()

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        need = item.input_tokens + item.output_tokens
        pool: Sequence[InstanceState]
        if isinstance(candidates, Candidates):  # rows in the fleet table: read from its buffer
            rows = candidates.row_list
            room = candidates.table.kv_room(rows, need)
            if all(room) or not any(room):
                pool = candidates
            else:
                at = [i for i, ok in enumerate(room) if ok]
                pool = with_rows(
                    [candidates[i] for i in at],
                    candidates.rows[at],
                    candidates.table,
                    [rows[i] for i in at],
                )
        else:
            fits = [c for c in candidates if kv_room(c, need)]
            pool = fits if fits else list(candidates)
        view = fleet.cache_view
        cached = view.cached_tokens(item, pool) if view is not None else None
        return pick_lowest_ttft(item, pool, cached, fleet.now, tie_tolerance)
