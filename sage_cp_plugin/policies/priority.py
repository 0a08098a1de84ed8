"""Priority order with linear aging, so low priority never starves.

A request of priority p (0 = CRITICAL ... 4 = BACKGROUND) that arrived at time t is keyed
``t + p * aging_s``: it runs before any request of more urgent class that arrived more than
``(p - q) * aging_s`` later. The key is static, so the queue stays a plain heap. With
``aging_s=None`` the order is strict priority (then FIFO within a class).
"""

from __future__ import annotations

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy, key_ms


class PriorityPolicy(SchedulingPolicy):
    name = "priority"

    def __init__(self, aging_s: float | None = 30.0) -> None:
        super().__init__()
        if aging_s is not None and aging_s <= 0:
            raise ValueError(f"aging_s must be positive or None, got {aging_s!r}")
        self.aging_s = aging_s

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        p = float(item.request.priority)
        if self.aging_s is None:
            return (p, item.arrival, float(item.seq))
        return (item.arrival + p * self.aging_s, float(item.seq))

    def engine_priority(self, item: QueuedRequest) -> int:
        if self.aging_s is None:
            return int(item.request.priority)
        return key_ms(self.key(item)[0])  # aged arrival, in milliseconds
