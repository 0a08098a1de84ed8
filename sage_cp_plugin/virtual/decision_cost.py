"""Measures what the coordinator's own decisions cost, in real (wall) time.

On a virtual clock the simulated GPUs cost nothing, so the wall time a replay takes is the
control plane's (plus the simulator's) own work. This probe wraps the dispatcher's round on
one manager instance (an instance attribute shadowing the method: no core change) and records,
per round, the pending-queue length and how many requests left the queue, so the cost per
decision can be shown against the queue length (it must stay flat: heaps, not scans).

It also times the pure decision alone (`planning.plan_head`: ordering and placement of one
queued request against the fleet view, no I/O, nothing launched) with `perf_counter_ns`
around each call that dispatched a request: `plan_us_p50`/`plan_us_p99` are the decision
cost per dispatch the issue 10 goal names (<= 50 us at 64 instances, <= 100 us at 256).
Wall time is meaningful only on a quiet machine, so the same calls are also timed in the
thread's CPU time (`plan_cpu_us_p50`/`plan_cpu_us_p99`, `time.thread_time_ns`): time the
thread was descheduled by other processes does not count there, which makes the figure
comparable between a quiet and a busy machine.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.planning import Launch, LaunchSplit

# Queue-length bins for the "flat in queue length" check.
_BINS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 10**9)


class DecisionCostProbe:
    def __init__(self, manager: ControlPlaneManager) -> None:
        self.manager = manager
        self.rounds = 0
        self.total_s = 0.0
        self.popped = 0
        self.samples: list[tuple[int, int, float]] = []  # (queue length, popped, seconds)
        dispatcher = manager.dispatcher
        original = dispatcher.dispatch_round

        def timed_round() -> None:
            queue = manager.queue
            before = len(queue)
            t = time.perf_counter()
            original()
            dt = time.perf_counter() - t
            popped = max(0, before - len(queue))
            self.rounds += 1
            self.total_s += dt
            self.popped += popped
            if popped:
                self.samples.append((before, popped, dt))

        dispatcher.dispatch_round = timed_round  # type: ignore[method-assign]

        self.plan_ns: list[int] = []  # one per plan that dispatched a request
        plan = dispatcher.plan_head

        self.plan_cpu_ns: list[int] = []

        def timed_plan(*args: Any) -> Any:
            c = time.thread_time_ns()
            t = time.perf_counter_ns()
            action = plan(*args)
            dt = time.perf_counter_ns() - t
            dc = time.thread_time_ns() - c
            if isinstance(action, Launch | LaunchSplit):
                self.plan_ns.append(dt)
                self.plan_cpu_ns.append(dc)
            return action

        dispatcher.plan_head = timed_plan  # type: ignore[assignment]

    def summary(self) -> dict[str, Any]:
        """Mean cost per dispatched request, overall and per queue-length bin (microseconds)."""
        by_bin: dict[str, dict[str, float]] = {}
        if self.samples:
            arr = np.array(self.samples, dtype=float)
            for lo, hi in itertools.pairwise(_BINS):
                sel = (arr[:, 0] >= lo) & (arr[:, 0] < hi)
                if sel.any():
                    per = arr[sel, 2] / arr[sel, 1]
                    by_bin[f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}"] = {
                        "rounds": float(sel.sum()),
                        "us_per_decision_mean": float(arr[sel, 2].sum() / arr[sel, 1].sum() * 1e6),
                        "us_per_decision_p50": float(np.percentile(per, 50) * 1e6),
                    }
        plan_us = np.array(self.plan_ns, dtype=float) / 1e3
        plan_cpu_us = np.array(self.plan_cpu_ns, dtype=float) / 1e3

        def pct(a: np.ndarray, q: float) -> float | None:
            return float(np.percentile(a, q)) if a.size else None

        return {
            "plan_decisions": int(plan_us.size),
            "plan_us_p50": pct(plan_us, 50),
            "plan_us_p99": pct(plan_us, 99),
            "plan_cpu_us_p50": pct(plan_cpu_us, 50),
            "plan_cpu_us_p99": pct(plan_cpu_us, 99),
            "rounds": self.rounds,
            "decisions": self.popped,
            "dispatch_s_total": self.total_s,
            "us_per_decision": self.total_s / self.popped * 1e6 if self.popped else 0.0,
            "by_queue_length": by_bin,
        }
