"""Measurements of finished requests: percentiles, throughput, SLO attainment, goodput.

Conventions (docs/architecture.md §9): TTFT includes queueing; TPOT = (E2E - TTFT) / (output - 1);
SLO attainment = share of finished requests meeting every SLO they carry (failed requests
count as misses); goodput = requests per second that completed within their SLOs.
Samples are kept in bounded windows so memory stays flat in long runs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sage_cp_plugin.types import PerformanceMetrics, RequestPriority, RequestResult, RequestStatus

OTHER_TAGS = "other"
_TAG_SERIES_CHARS = 128


def slo_met(
    result: RequestResult,
    ttft_slo_ms: float | None,
    tpot_slo_ms: float | None,
    deadline_ms: float | None,
) -> bool | None:
    """True/False when the request carried an SLO, None when it carried none."""
    if ttft_slo_ms is None and tpot_slo_ms is None and deadline_ms is None:
        return None
    if result.state != RequestStatus.COMPLETED:
        return False
    t = result.timings
    if ttft_slo_ms is not None and (t.ttft_ms is None or t.ttft_ms > ttft_slo_ms):
        return False
    if tpot_slo_ms is not None and t.tpot_ms is not None and t.tpot_ms > tpot_slo_ms:
        return False
    return not (deadline_ms is not None and (t.e2e_ms is None or t.e2e_ms > deadline_ms))


def _pct(values: deque[float], q: float) -> float:
    return float(np.percentile(np.fromiter(values, dtype=float), q)) if values else 0.0


def _mean(values: deque[float]) -> float:
    return float(np.mean(np.fromiter(values, dtype=float))) if values else 0.0


@dataclass
class MetricsCollector:
    window: int = 100_000
    started_at: float | None = None
    last_finish: float = 0.0
    total: int = 0
    completed: int = 0
    failed: int = 0
    slo_total: int = 0
    slo_violations: int = 0
    good: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0  # of completed requests (the autoscaler's mean prompt length)
    # Sums of squares of the same lengths (the autoscaler's length variance, queueing tails).
    prompt_tokens_sq: int = 0
    output_tokens_sq: int = 0
    retries: int = 0  # attempts started again after a failed one (same or other instance)
    failovers: int = 0  # of those, attempts that moved off an instance that had failed
    total_cost: float = 0.0  # in the instances' price unit (see cost.py)
    # Bounded cardinality: at most `max_tag_series` distinct "key=value" series; requests
    # whose tags would open more are counted under OTHER_TAGS.
    max_tag_series: int = 64
    by_tag: dict[str, list[int]] = field(
        default_factory=dict
    )  # [completed, failed, slo met, slo total]
    e2e: deque[float] = field(default_factory=deque)
    ttft: deque[float] = field(default_factory=deque)
    tpot: deque[float] = field(default_factory=deque)
    queue: deque[float] = field(default_factory=deque)
    slo_by_priority: dict[str, list[int]] = field(default_factory=dict)  # name -> [met, total]
    # Cost per model and per tag series (the same bounded series as `by_tag`: `arm=...` of
    # an A/B experiment, `tenant=...`): who spends what.
    cost_by_model: dict[str, float] = field(default_factory=dict)
    cost_by_tag: dict[str, float] = field(default_factory=dict)
    recent_finishes: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    # (prompt, output) tokens of the last completed requests: the autoscaler's TPOT tail
    # needs the length distribution, not only its moments.
    recent_lengths: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=1024))

    def __post_init__(self) -> None:
        for name in ("e2e", "ttft", "tpot", "queue"):
            setattr(self, name, deque(maxlen=self.window))

    def on_submit(self, now: float) -> None:
        self.total += 1
        if self.started_at is None:
            self.started_at = now

    def drain_rate(self, now: float) -> float:
        """Requests finished per second lately (0 when unknown)."""
        if len(self.recent_finishes) < 2:
            return 0.0
        span = now - self.recent_finishes[0]
        return len(self.recent_finishes) / span if span > 0 else 0.0

    def on_finish(self, result: RequestResult, met: bool | None, now: float) -> None:
        self.last_finish = now
        self.recent_finishes.append(now)
        cost = result.cost
        if cost is not None:
            self.total_cost += cost
            model = result.model_name or "none"
            self.cost_by_model[model] = self.cost_by_model.get(model, 0.0) + cost
        for series in self._tag_series(result.tags):
            if cost is not None:
                self.cost_by_tag[series] = self.cost_by_tag.get(series, 0.0) + cost
            counts = self.by_tag.setdefault(series, [0, 0, 0, 0])
            counts[0 if result.state == RequestStatus.COMPLETED else 1] += 1
            if met is not None:
                counts[2] += int(met)
                counts[3] += 1
        t = result.timings
        if result.state == RequestStatus.COMPLETED:
            self.completed += 1
            self.output_tokens += result.completion_tokens
            self.prompt_tokens += result.prompt_tokens
            self.output_tokens_sq += result.completion_tokens**2
            self.prompt_tokens_sq += result.prompt_tokens**2
            self.recent_lengths.append((result.prompt_tokens, result.completion_tokens))
            if t.e2e_ms is not None:
                self.e2e.append(t.e2e_ms)
            if t.ttft_ms is not None:
                self.ttft.append(t.ttft_ms)
            if t.tpot_ms is not None:
                self.tpot.append(t.tpot_ms)
            if t.queue_ms is not None:
                self.queue.append(t.queue_ms)
        else:
            self.failed += 1
        if met is not None:
            self.slo_total += 1
            name = RequestPriority(result.priority).name
            bucket = self.slo_by_priority.setdefault(name, [0, 0])
            bucket[1] += 1
            if met:
                bucket[0] += 1
            else:
                self.slo_violations += 1
        if result.state == RequestStatus.COMPLETED and met is not False:
            self.good += 1

    def _tag_series(self, tags: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for key, value in tags.items():
            series = f"{key}={value}"[:_TAG_SERIES_CHARS]
            if series not in self.by_tag and len(self.by_tag) >= self.max_tag_series:
                series = OTHER_TAGS
            if series not in out:
                out.append(series)
        return out

    def tag_counts(self) -> dict[str, dict[str, int]]:
        return {
            k: {"completed": v[0], "failed": v[1], "slo_met": v[2], "slo_total": v[3]}
            for k, v in sorted(self.by_tag.items())
        }

    def snapshot(
        self,
        now: float,
        *,
        active: int,
        queued: int,
        policy: str = "",
        policy_switches: int = 0,
        slot_occupancy: float = 0.0,
        kv_cache_usage: float | None = None,
    ) -> PerformanceMetrics:
        elapsed = (now - self.started_at) if self.started_at is not None else 0.0
        elapsed = max(elapsed, 1e-9)
        finished = self.completed + self.failed
        return PerformanceMetrics(
            total_requests=self.total,
            completed_requests=self.completed,
            failed_requests=self.failed,
            active_requests=active,
            queued_requests=queued,
            avg_latency_ms=_mean(self.e2e),
            p50_latency_ms=_pct(self.e2e, 50),
            p95_latency_ms=_pct(self.e2e, 95),
            p99_latency_ms=_pct(self.e2e, 99),
            avg_ttft_ms=_mean(self.ttft),
            p50_ttft_ms=_pct(self.ttft, 50),
            p95_ttft_ms=_pct(self.ttft, 95),
            p99_ttft_ms=_pct(self.ttft, 99),
            avg_tpot_ms=_mean(self.tpot),
            p95_tpot_ms=_pct(self.tpot, 95),
            avg_queue_ms=_mean(self.queue),
            p95_queue_ms=_pct(self.queue, 95),
            tokens_per_second=self.output_tokens / elapsed if finished else 0.0,
            requests_per_second=self.completed / elapsed if finished else 0.0,
            slo_violations=self.slo_violations,
            slo_compliance_rate=(1.0 - self.slo_violations / self.slo_total)
            if self.slo_total
            else 1.0,
            slo_attainment_by_priority={
                k: (v[0] / v[1] if v[1] else 1.0) for k, v in sorted(self.slo_by_priority.items())
            },
            goodput_rps=self.good / elapsed if finished else 0.0,
            slot_occupancy=slot_occupancy,
            kv_cache_usage=kv_cache_usage,
            gpu_utilization=None,  # vLLM's /metrics reports no GPU compute utilisation
            total_cost=self.total_cost,
            cost_by_model=dict(sorted(self.cost_by_model.items())),
            cost_by_tag=dict(sorted(self.cost_by_tag.items())),
            requests_by_tag=self.tag_counts(),
            policy=policy,
            policy_switches=policy_switches,
            retries=self.retries,
            failovers=self.failovers,
        )
