"""Synthetic workloads and transformations: arrivals, SLO-class mixes, tenants, load ladders.

Arrival processes: Poisson (exponential gaps) and bursty gamma (gaps with a coefficient of
variation `cv` > 1: shape 1/cv^2, same mean; cv = 1 is Poisson). Everything draws from a
`numpy.random.Generator` the caller seeds, so a scenario run is repeatable per seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sage_cp_plugin.types import RequestPriority
from sage_cp_plugin.workloads.format import WorkloadRecord


def poisson_arrivals(rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    """`n` arrival times (s) of a Poisson process of `rate` requests/s, starting at 0."""
    return gamma_arrivals(rng, rate, n, cv=1.0)


def gamma_arrivals(rng: np.random.Generator, rate: float, n: int, cv: float = 3.0) -> np.ndarray:
    """`n` arrival times with gamma gaps: mean 1/rate, coefficient of variation `cv`."""
    if rate <= 0 or cv <= 0:
        raise ValueError(f"rate and cv must be positive, got rate={rate!r} cv={cv!r}")
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
    times = np.cumsum(gaps)
    return times - times[0] if n else times


@dataclass(frozen=True)
class SLOClass:
    """A traffic class: its share of requests, priority and latency objectives."""

    name: str
    share: float
    priority: RequestPriority = RequestPriority.NORMAL
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    deadline_ms: float | None = None


# The classes: interactive (TTFT 200 ms, TPOT 50 ms), standard (1 s, 100 ms), batch.
INTERACTIVE = SLOClass("interactive", 0.3, RequestPriority.HIGH, 200.0, 50.0)
STANDARD = SLOClass("standard", 0.4, RequestPriority.NORMAL, 1000.0, 100.0)
BATCH = SLOClass("batch", 0.3, RequestPriority.LOW)
DEFAULT_CLASSES = (INTERACTIVE, STANDARD, BATCH)


def assign_classes(
    records: Sequence[WorkloadRecord], classes: Sequence[SLOClass], rng: np.random.Generator
) -> list[WorkloadRecord]:
    """Each record gets one class, drawn with the classes' shares."""
    shares = np.array([c.share for c in classes], dtype=float)
    picks = rng.choice(len(classes), size=len(records), p=shares / shares.sum())
    out = []
    for r, k in zip(records, picks, strict=True):
        c = classes[int(k)]
        out.append(
            r.model_copy(
                update={
                    "slo_class": c.name,
                    "priority": c.priority,
                    "ttft_slo_ms": c.ttft_slo_ms,
                    "tpot_slo_ms": c.tpot_slo_ms,
                    "deadline_ms": c.deadline_ms,
                }
            )
        )
    return out


def assign_tenants(
    records: Sequence[WorkloadRecord],
    n_tenants: int,
    rng: np.random.Generator,
    zipf_s: float = 1.1,
) -> list[WorkloadRecord]:
    """Tenants `tenant-0..n-1` with Zipf-like popularity (a few large, a long tail)."""
    weights = 1.0 / np.arange(1, n_tenants + 1) ** zipf_s
    picks = rng.choice(n_tenants, size=len(records), p=weights / weights.sum())
    return [
        r.model_copy(update={"tenant": f"tenant-{int(k)}"})
        for r, k in zip(records, picks, strict=True)
    ]


def tenant_prefixes(
    records: Sequence[WorkloadRecord], system_blocks: int = 2, base_id: int = 10_000_000
) -> list[WorkloadRecord]:
    """Give each tenant a shared system prompt: `system_blocks` blocks before its own ones."""
    out = []
    for r in records:
        t = int((r.tenant or "tenant-0").rsplit("-", 1)[-1])
        sys_ids = tuple(base_id + t * system_blocks + j for j in range(system_blocks))
        out.append(
            r.model_copy(
                update={
                    "prefix_blocks": sys_ids + r.prefix_blocks,
                    "input_tokens": r.input_tokens + 512 * system_blocks,
                }
            )
        )
    return out


def with_arrivals(records: Sequence[WorkloadRecord], times: np.ndarray) -> list[WorkloadRecord]:
    """Replace arrival times (lengths kept): a trace's lengths on a synthetic arrival process."""
    if len(times) < len(records):
        raise ValueError(f"{len(times)} arrival times for {len(records)} records")
    return [
        r.model_copy(update={"arrival_s": float(t)}) for r, t in zip(records, times, strict=False)
    ]


def mean_rate(records: Sequence[WorkloadRecord]) -> float:
    """Requests per second over the span of arrivals."""
    if len(records) < 2:
        return 0.0
    span = records[-1].arrival_s - records[0].arrival_s
    return (len(records) - 1) / span if span > 0 else float("inf")


def time_scaled(records: Sequence[WorkloadRecord], rate: float) -> list[WorkloadRecord]:
    """The same requests with arrival times stretched/compressed to `rate` requests/s."""
    current = mean_rate(records)
    if current <= 0 or current == float("inf"):
        raise ValueError("cannot rescale a workload without a positive arrival span")
    k = current / rate
    t0 = records[0].arrival_s
    return [r.model_copy(update={"arrival_s": (r.arrival_s - t0) * k}) for r in records]


def evenly_spaced_windows(
    records: Sequence[WorkloadRecord], size: int, k: int
) -> tuple[list[int], list[list[WorkloadRecord]]]:
    """`k` windows of `size` consecutive records at offsets spread evenly over the whole
    sequence (the first and last window touch its ends; one window sits in the middle), each
    with arrivals re-based to 0: windows chosen by rule, never by hand."""
    if k < 1 or size < 1 or not records:
        raise ValueError(f"need k >= 1, size >= 1 and records, got k={k}, size={size}")
    size = min(size, len(records))
    last = len(records) - size
    offsets = [round(j * last / (k - 1)) if k > 1 else last // 2 for j in range(k)]
    windows = []
    for off in offsets:
        w = records[off : off + size]
        t0 = w[0].arrival_s
        windows.append([r.model_copy(update={"arrival_s": r.arrival_s - t0}) for r in w])
    return offsets, windows


def load_ladder(
    records: Sequence[WorkloadRecord], capacity_rps: float, levels: Sequence[float]
) -> dict[float, list[WorkloadRecord]]:
    """One time-scaled copy of the workload per load level (fraction of `capacity_rps`)."""
    return {lvl: time_scaled(records, lvl * capacity_rps) for lvl in levels}


def synthetic(
    rng: np.random.Generator,
    n: int,
    rate: float,
    *,
    input_tokens: tuple[int, int] = (128, 1024),
    output_tokens: tuple[int, int] = (32, 256),
    cv: float = 1.0,
) -> list[WorkloadRecord]:
    """`n` requests with log-uniform lengths in the given ranges and gamma/Poisson arrivals."""
    times = gamma_arrivals(rng, rate, n, cv)

    def lengths(lo: int, hi: int) -> np.ndarray:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), size=n)).astype(int)

    ins, outs = lengths(*input_tokens), lengths(*output_tokens)
    return [
        WorkloadRecord(arrival_s=float(t), input_tokens=int(i), output_tokens=int(o))
        for t, i, o in zip(times, ins, outs, strict=True)
    ]
