"""The ``roofline`` strategy: search layouts, estimate each, rank by the objective."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from sage_cp_plugin.parallelism.errors import NoFeasibleLayoutError
from sage_cp_plugin.parallelism.estimate import FleetEstimator, LayoutEstimate
from sage_cp_plugin.parallelism.layout import Layout
from sage_cp_plugin.parallelism.objectives import Objective, meets_target, score
from sage_cp_plugin.parallelism.plan import Candidate, Plan, PoolPlan
from sage_cp_plugin.parallelism.roofline import Calibration
from sage_cp_plugin.parallelism.search import exhaustive_layouts, pruned_layouts
from sage_cp_plugin.parallelism.strategy import PlanRequest

Searcher = Callable[[FleetEstimator, int, Objective, bool], Iterable[Layout]]


def workload_summary(request: PlanRequest) -> dict[str, object]:
    w = request.workload
    return {
        "name": w.name,
        "samples": len(w.input_lengths),
        "mean_input_tokens": round(w.mean_input, 1),
        "mean_output_tokens": round(w.mean_output, 1),
        "rate_rps": w.rate_rps,
        "ttft_slo_ms": w.ttft_slo_ms,
        "tpot_slo_ms": w.tpot_slo_ms,
        "attainment_target": w.attainment_target,
    }


def rank(
    request: PlanRequest,
    est: FleetEstimator,
    scored: list[tuple[Layout, LayoutEstimate]],
    strategy: str,
    started: float,
    top_k: int | None = None,
) -> Plan:
    """Sort by objective score, keep the top ``top_k``, attach flags and instances."""
    obj, w = request.objective, request.workload
    if obj is Objective.MIN_GPUS and not any(meets_target(e, w) for _, e in scored):
        best = max(e.goodput_rps for _, e in scored)
        raise NoFeasibleLayoutError(
            f"no layout of {request.gpu_count} x {request.gpu.name} sustains rate_rps="
            f"{w.rate_rps:g} within the SLOs; the best reaches {best:.2f} req/s"
        )
    ordered = sorted(scored, key=lambda le: score(obj, le[1], w), reverse=True)
    seen: set[Layout] = set()
    cands: list[Candidate] = []
    name = request.model.serve_name
    for layout, e in ordered:
        if layout in seen:
            continue
        seen.add(layout)
        port, pools = 8000, []
        for p in layout.pools:
            pools.append(PoolPlan.build(p, est.fit(p.shape), name, port))
            port += p.replicas
        cands.append(
            Candidate(
                rank=len(cands) + 1,
                label=layout.label,
                layout=layout,
                pools=pools,
                estimate=e,
                score=[float(x) for x in score(obj, e, w)],
                fits=all(est.fit(p.shape).fits for p in layout.pools),
                note=""
                if all(est.fit(p.shape).fits for p in layout.pools)
                else "; ".join(
                    est.fit(p.shape).reason for p in layout.pools if not est.fit(p.shape).fits
                ),
            )
        )
        if len(cands) >= (top_k or request.top_k):
            break
    return Plan(
        strategy=strategy,
        model=request.model.name,
        serve_name=name,
        gpu=request.gpu.name,
        gpu_count=request.gpu_count,
        objective=obj.value,
        workload=workload_summary(request),
        candidates=cands,
        layouts_evaluated=est.evaluations,
        planning_time_ms=(time.perf_counter() - started) * 1e3,
    )


class RooflinePlanner:
    """Roofline estimates over a pruned layout search (see ``search.pruned_layouts``)."""

    name = "roofline"

    def __init__(self, *, calibration: Calibration | None = None, exhaustive: bool = False) -> None:
        self.calibration = calibration or Calibration()
        self.search: Searcher = exhaustive_layouts if exhaustive else pruned_layouts

    def plan(self, request: PlanRequest) -> Plan:
        started = time.perf_counter()
        est = FleetEstimator(request.model, request.gpu, request.workload, self.calibration)
        layouts = dict.fromkeys(
            self.search(est, request.gpu_count, request.objective, request.allow_disaggregation)
        )
        scored = [(layout, est.evaluate(layout)) for layout in layouts]
        return rank(request, est, scored, self.name, started)
