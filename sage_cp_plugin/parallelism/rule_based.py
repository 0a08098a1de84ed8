"""The sageLLM document's threshold rules, kept as a baseline and estimated like any layout.

16+ GPUs: TP=4, PP=2, DP=rest; 8-15: TP=4, DP=rest; 4-7: TP=4; fewer: TP=min(gpus, 2).
The rules ignore the model, so the layout may not even hold it: the plan then says so
(``fits=False`` and a note) instead of hiding it.
"""

from __future__ import annotations

import time

from sage_cp_plugin.parallelism.estimate import FleetEstimator
from sage_cp_plugin.parallelism.layout import InstanceShape, Layout, Pool, Role
from sage_cp_plugin.parallelism.plan import Plan
from sage_cp_plugin.parallelism.planner import rank
from sage_cp_plugin.parallelism.roofline import Calibration
from sage_cp_plugin.parallelism.strategy import PlanRequest


def rule_based_sizes(gpu_count: int) -> tuple[int, int, int]:
    """(tp, pp, dp) of the document's rules."""
    if gpu_count >= 16:
        tp, pp = 4, 2
    elif gpu_count >= 8:
        tp, pp = 4, 1
    elif gpu_count >= 4:
        tp, pp = 4, 1
    else:
        tp, pp = min(gpu_count, 2), 1
    return tp, pp, max(1, gpu_count // (tp * pp))


class RuleBasedStrategy:
    name = "rule_based"

    def __init__(self, *, calibration: Calibration | None = None) -> None:
        self.calibration = calibration or Calibration()

    def plan(self, request: PlanRequest) -> Plan:
        started = time.perf_counter()
        tp, pp, dp = rule_based_sizes(request.gpu_count)
        layout = Layout(
            pools=(Pool(role=Role.GENERAL, shape=InstanceShape(tp=tp, pp=pp), replicas=dp),)
        )
        est = FleetEstimator(request.model, request.gpu, request.workload, self.calibration)
        return rank(request, est, [(layout, est.evaluate(layout))], self.name, started, 1)
