"""First in, first out: arrival order, nothing else."""

from __future__ import annotations

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy


class FIFOPolicy(SchedulingPolicy):
    name = "fifo"

    def key(self, item: QueuedRequest) -> tuple[float, ...]:
        return (item.arrival, float(item.seq))
