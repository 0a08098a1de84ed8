"""KV-aware routing: prefer instances with free KV cache and a short vLLM waiting queue.

Uses the scraped `vllm:kv_cache_usage_perc` and `vllm:num_requests_waiting`; when a scrape
is stale or missing it falls back to the coordinator's own in-flight count, so a silent
`/metrics` never steers traffic with old numbers.

For instances whose vLLM KV-cache events are live, the share of the prompt the instance
already caches (exact, evictions included) lowers its score by ``prefix_weight`` times that
share. Instances without events keep the load-only score: kv_aware never had an approximate
prefix term, and one that cannot see evictions would misplace work it was not tuned for.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.routing.prefix_overlap import cached_fractions
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class KVAwareRouter(Router):
    name = "kv_aware"

    def __init__(
        self,
        kv_weight: float = 1.0,
        waiting_weight: float = 1.0,
        inflight_weight: float = 0.5,
        prefix_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.prefix_weight = prefix_weight
        self.kv_weight = kv_weight
        self.waiting_weight = waiting_weight
        self.inflight_weight = inflight_weight

    def score(self, s: InstanceState) -> float:
        cap = max(1, s.capacity)
        own = s.in_flight / cap
        if not s.scraped.fresh:
            return own * (self.inflight_weight + self.waiting_weight)
        return (
            self.kv_weight * s.scraped.kv_usage
            + self.waiting_weight * s.scraped.waiting / cap
            + self.inflight_weight * own
        )

    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        if not candidates:
            return None
        n = len(candidates)
        cached = (
            cached_fractions(item, candidates, fleet, None, [])
            if fleet.exact_cache is not None and item.prompt_token_ids
            else None
        )
        start = item.seq % n
        best = candidates[start]
        best_score = self.score(best)
        if cached is not None:
            best_score -= self.prefix_weight * cached[start]
        for i in range(1, n):
            j = (start + i) % n
            c = candidates[j]
            sc = self.score(c)
            if cached is not None:
                sc -= self.prefix_weight * cached[j]
            if sc < best_score:
                best, best_score = c, sc
        return best
