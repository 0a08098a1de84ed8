"""Forecast the next period's load, GPU-hours and cost from a request log, and backtest it.

The model, kept simple on purpose (its parts can be checked one by one):
- **Load**: the log is cut into periods of `period_s` (full periods only). The next period's
  request count and prompt/output token counts are the exponentially weighted moving average
  (EWMA, weight `alpha` on the newest period) of the past periods'. EWMA is the seasonal-naive
  forecast without a season: it follows a level that drifts, damps one-period noise, and needs
  no more history than the logs here hold (an hour; a daily season needs days of history).
  `alpha` is a fixed default (0.5), not fitted to any trace.
- **Capacity**: what one instance of each preset of the fleet serves per second on this mix of
  lengths, measured by the simulator through the real coordinator on the virtual clock: a
  sample of the period's requests (evenly spaced, by rule) is offered at once to one instance
  and the completion rate while it is saturated is taken (`steady.saturated_throughput`). The
  forecast uses the mix of the newest observed period.
- **GPU-hours**: in a period the fleet serves `C = sum of its instances' capacities` requests
  per second on that period's mix; its `n` requests need it for `n / C` seconds, so
  `GPU-hours = fleet GPUs x n / C / 3600` (the GPUs an elastic fleet keeps busy: provisioned
  idle time is not forecast). The next period's GPU-hours are the EWMA of the past periods'
  GPU-hours (load and mix together, each period measured as above); its cost is that busy time
  at each hour-priced instance's `price_per_gpu_hour x its GPUs`, plus each token-priced
  instance's share (`capacity / C`) of the forecast tokens.
- **Backtest**: each of the last `holdout` periods is forecast from the periods before it only,
  and compared with its actual GPU-hours (its own request count over the capacity measured on
  its own requests); the error is `|forecast - actual| / actual`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.sim.presets import PRESETS
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.virtual.steady import saturated_throughput
from sage_cp_plugin.workloads.format import WorkloadRecord

DEFAULT_ALPHA = 0.5
DEFAULT_SAMPLE = 1024  # requests offered at once to measure one instance's capacity
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PeriodLoad:
    """What arrived in one period: requests and tokens (prompt, output)."""

    start_s: float
    requests: int
    input_tokens: int
    output_tokens: int
    records: tuple[WorkloadRecord, ...] = field(repr=False, default=())


def cut_periods(records: Sequence[WorkloadRecord], period_s: float) -> list[PeriodLoad]:
    """Full periods of `period_s` from the first arrival (a trailing partial one is dropped)."""
    if period_s <= 0 or not math.isfinite(period_s):
        raise ConfigurationError(f"--period must be a positive number of seconds, got {period_s}")
    if not records:
        return []
    t0 = records[0].arrival_s
    n = int((records[-1].arrival_s - t0) // period_s)  # periods that end before the last arrival
    buckets: list[list[WorkloadRecord]] = [[] for _ in range(n)]
    for r in records:
        k = int((r.arrival_s - t0) // period_s)
        if k < n:
            buckets[k].append(r)
    return [
        PeriodLoad(
            start_s=t0 + k * period_s,
            requests=len(b),
            input_tokens=sum(r.prompt_tokens for r in b),
            output_tokens=sum(r.output_tokens for r in b),
            records=tuple(b),
        )
        for k, b in enumerate(buckets)
    ]


def ewma(values: Sequence[float], alpha: float = DEFAULT_ALPHA) -> float:
    """EWMA of `values` (oldest first), started at the first value."""
    if not values:
        raise ValueError("need at least one value")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    level = float(values[0])
    for v in values[1:]:
        level = alpha * float(v) + (1 - alpha) * level
    return level


def evenly_spaced(records: Sequence[WorkloadRecord], n: int) -> list[WorkloadRecord]:
    """`n` records spread evenly over `records`; fewer are repeated in turn up to `n` (a
    quiet period's mix, offered in the volume a capacity measurement needs)."""
    if not records:
        return []
    if len(records) <= n:
        return [records[i % len(records)] for i in range(n)]
    idx = np.linspace(0, len(records) - 1, n).round().astype(int)
    return [records[i] for i in idx]


def instance_capacity(
    records: Sequence[WorkloadRecord], member: MemberSpec, *, sample: int = DEFAULT_SAMPLE
) -> float:
    """Requests per second one instance (`member`) completes while saturated by this mix."""
    offered = [r.model_copy(update={"arrival_s": 0.0}) for r in evenly_spaced(records, sample)]
    config = CoordinatorConfig(router="round_robin", policy="fifo", upstream_streaming=False)
    result = run_replay(offered, InProcessFleet([member]), config)
    rate = saturated_throughput(result.outcomes)
    if rate is None:
        raise ConfigurationError(
            f"cannot measure the capacity of preset {member.config.preset!r}: the "
            f"{len(offered)} sampled requests did not saturate one instance "
            f"({member.max_concurrent_requests} slots); use a larger --sample"
        )
    return rate


@dataclass
class FleetModel:
    """The fleet a forecast prices: its members, with capacities measured per preset."""

    members: list[MemberSpec]
    sample: int = DEFAULT_SAMPLE
    progress: Progress = lambda _: None
    _cache: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return sum(PRESETS[m.config.preset].tp for m in self.members)

    def capacities(self, period: PeriodLoad, key: int) -> list[float]:
        """Each member's capacity on `period`'s mix (measured once per preset and period)."""
        out = []
        for m in self.members:
            k = (m.config.preset, key)
            if k not in self._cache and not period.records:
                # An empty period has no mix: take the newest one measured before it.
                older = [c for (p, j), c in sorted(self._cache.items()) if p == k[0] and j < key]
                if not older:
                    raise ConfigurationError(f"period {key} has no requests to measure")
                self._cache[k] = older[-1]
            if k not in self._cache:
                self._cache[k] = instance_capacity(period.records, m, sample=self.sample)
                self.progress(
                    f"capacity of one {m.config.preset} on period {key}'s mix: "
                    f"{self._cache[k]:.2f} req/s"
                )
            out.append(self._cache[k])
        return out

    def price(
        self, requests: float, tokens: float, capacities: Sequence[float]
    ) -> dict[str, float | None]:
        """GPU-hours and cost of serving `requests` (with `tokens`) at these capacities."""
        total = sum(capacities)
        busy_h = requests / total / 3600.0 if requests > 0 else 0.0
        cost, priced = 0.0, False
        for m, c in zip(self.members, capacities, strict=True):
            per_1k = m.extra.get("price_per_1k_tokens")
            per_hour = m.extra.get("price_per_gpu_hour")
            if per_1k is not None:
                cost += per_1k * tokens * (c / total) / 1000.0
                priced = True
            elif per_hour is not None:
                cost += per_hour * PRESETS[m.config.preset].tp * busy_h
                priced = True
        return {
            "gpu_hours": self.gpus * busy_h,
            "cost": cost if priced else None,
            "fleet_capacity_rps": total,
        }


def forecast_next(
    periods: Sequence[PeriodLoad], fleet: FleetModel, alpha: float, key: int
) -> dict[str, Any]:
    """The period after `periods` (`key` numbers the newest one): EWMA of the load and of
    the measured GPU-hours; cost at the newest period's capacities."""
    req = ewma([p.requests for p in periods], alpha)
    inp = ewma([p.input_tokens for p in periods], alpha)
    out = ewma([p.output_tokens for p in periods], alpha)
    first = key - len(periods) + 1
    past = [
        fleet.price(p.requests, p.input_tokens + p.output_tokens, fleet.capacities(p, first + i))
        for i, p in enumerate(periods)
    ]
    gpu_hours = ewma([h["gpu_hours"] or 0.0 for h in past], alpha)
    caps = fleet.capacities(periods[-1], key)
    # The forecast GPU-hours priced at the newest mix: scale the newest period's pricing.
    priced = fleet.price(gpu_hours * 3600.0 * sum(caps) / fleet.gpus, inp + out, caps)
    return {
        "requests": req,
        "input_tokens": inp,
        "output_tokens": out,
        **priced,
    }


def backtest(
    periods: Sequence[PeriodLoad], fleet: FleetModel, holdout: int, alpha: float
) -> list[dict[str, Any]]:
    """Forecast each of the last `holdout` periods from the ones before it; compare."""
    if holdout < 1 or holdout >= len(periods):
        raise ConfigurationError(
            f"the backtest needs 1 <= holdout < periods; got holdout {holdout} with "
            f"{len(periods)} full period(s): use a shorter --period or a longer log"
        )
    rows = []
    for k in range(len(periods) - holdout, len(periods)):
        f = forecast_next(periods[:k], fleet, alpha, key=k - 1)
        p = periods[k]
        actual = fleet.price(p.requests, p.input_tokens + p.output_tokens, fleet.capacities(p, k))
        rows.append(
            {
                "period": k,
                "start_s": p.start_s,
                "forecast_requests": f["requests"],
                "actual_requests": p.requests,
                "forecast_gpu_hours": f["gpu_hours"],
                "actual_gpu_hours": actual["gpu_hours"],
                "gpu_hours_error": abs(f["gpu_hours"] - actual["gpu_hours"]) / actual["gpu_hours"]
                if actual["gpu_hours"]
                else None,
                "requests_error": abs(f["requests"] - p.requests) / p.requests
                if p.requests
                else None,
                "forecast_cost": f["cost"],
                "actual_cost": actual["cost"],
            }
        )
    return rows
