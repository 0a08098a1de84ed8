"""A minimum that slowly forgets: the best case of a measurement that queueing only inflates.

Delays measured through a busy system (a TTFT, a KV pull) are the cost itself plus waits;
their minimum estimates the cost. Each new sample lets the minimum rise by `forget`
(1 % by default), so a lasting slowdown (longer contexts, a throttled link) is learnt again
instead of being held to an old best.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SlidingMin:
    forget: float = 1.01
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else min(x, self.value * self.forget)

    def get(self, default: float) -> float:
        return default if self.value is None else self.value
