"""`RecordStats`: counts, throughput, latency percentiles and SLO attainment of a job.

Latencies are kept in compact `array('d')`s (8 bytes per request) rather than as records,
so a job's memory does not grow with the records' sizes.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections import Counter
from typing import Any

from .records import ResultRecord


def percentile(values: array[float] | list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


class RecordStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.finished: float | None = None
        self.succeeded = 0
        self.failed = 0
        self.by_kind: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.slo_met = 0
        self.slo_total = 0
        self.e2e_ms: array[float] = array("d")
        self.ttft_ms: array[float] = array("d")

    def add(self, record: ResultRecord) -> None:
        with self._lock:
            self.by_kind[record.kind or "unknown"] += 1
            if record.ok:
                self.succeeded += 1
                if record.timings.e2e_ms is not None:
                    self.e2e_ms.append(record.timings.e2e_ms)
                if record.timings.ttft_ms is not None and record.kind != "embedding":
                    self.ttft_ms.append(record.timings.ttft_ms)
            else:
                self.failed += 1
                self.errors[record.error.code if record.error else "unknown"] += 1
            self.prompt_tokens += record.prompt_tokens
            self.completion_tokens += record.completion_tokens
            # slo_met is None when the request carried no SLO; failures with one are misses.
            if record.slo_met is not None:
                self.slo_total += 1
                self.slo_met += int(record.slo_met)

    def stop(self) -> None:
        self.finished = time.monotonic()

    @property
    def total(self) -> int:
        return self.succeeded + self.failed

    def summary(self) -> dict[str, Any]:
        with self._lock:
            elapsed = (self.finished or time.monotonic()) - self.started
            rate = self.total / elapsed if elapsed > 0 else 0.0

            def pcts(values: array[float]) -> dict[str, float | None]:
                return {f"p{q}": percentile(values, q) for q in (50, 95, 99)}

            return {
                "total": self.total,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "by_kind": dict(self.by_kind),
                "errors": dict(self.errors),
                "elapsed_s": elapsed,
                "requests_per_s": rate,
                "completion_tokens_per_s": self.completion_tokens / elapsed if elapsed else 0.0,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "e2e_ms": pcts(self.e2e_ms),
                "ttft_ms": pcts(self.ttft_ms),
                "slo_requests": self.slo_total,
                "slo_attainment": self.slo_met / self.slo_total if self.slo_total else None,
            }


def format_summary(s: dict[str, Any]) -> str:
    """A few human lines for the end of a job."""

    def ms(d: dict[str, float | None]) -> str:
        return " ".join(f"{k}={v:.0f}ms" if v is not None else f"{k}=-" for k, v in d.items())

    kinds = ", ".join(f"{k}={v}" for k, v in sorted(s["by_kind"].items())) or "none"
    lines = [
        f"requests: {s['total']} ({s['succeeded']} ok, {s['failed']} failed) [{kinds}]",
        f"time: {s['elapsed_s']:.1f}s  throughput: {s['requests_per_s']:.1f} req/s, "
        f"{s['completion_tokens_per_s']:.0f} output tokens/s",
        f"latency e2e: {ms(s['e2e_ms'])}  ttft: {ms(s['ttft_ms'])}",
    ]
    if s["slo_attainment"] is not None:
        lines.append(
            f"SLO attainment: {100 * s['slo_attainment']:.1f}% of {s['slo_requests']} requests"
        )
    else:
        lines.append("SLO attainment: - (no request carried an SLO)")
    if s["errors"]:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(s["errors"].items())))
    return "\n".join(lines)
