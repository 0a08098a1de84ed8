"""KV-aware routing: prefer instances with free KV cache and a short vLLM waiting queue.

Uses the scraped `vllm:kv_cache_usage_perc` and `vllm:num_requests_waiting`; when a scrape
is stale or missing it falls back to the coordinator's own in-flight count, so a silent
`/metrics` never steers traffic with old numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.state import FleetSnapshot, InstanceState


class KVAwareRouter(Router):
    name = "kv_aware"

    def __init__(
        self, kv_weight: float = 1.0, waiting_weight: float = 1.0, inflight_weight: float = 0.5
    ) -> None:
        super().__init__()
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
        start = item.seq % n
        best = candidates[start]
        best_score = self.score(best)
        for i in range(1, n):
            c = candidates[(start + i) % n]
            sc = self.score(c)
            if sc < best_score:
                best, best_score = c, sc
        return best
