"""Which layouts to evaluate: the planner's pruned search and the exhaustive reference.

Both score layouts with the same :class:`FleetEstimator`, so the benchmark can measure how
much the pruning loses. The pruned search relies on two facts of the estimator: a general
pool's rate scales linearly with replicas (requests split evenly), and a disaggregated layout
is best when prefill and decode capacity are balanced (its rate is the minimum of the two).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from sage_cp_plugin.parallelism.errors import NoFeasibleLayoutError
from sage_cp_plugin.parallelism.estimate import FleetEstimator
from sage_cp_plugin.parallelism.layout import InstanceShape, Layout, Pool, Role, enumerate_shapes
from sage_cp_plugin.parallelism.objectives import Objective

SHORTLIST = 3  # prefill and decode shapes kept for pairing (3 x 3 pairs)
_MAX_SEARCH_GPUS = 4096


def fitting_shapes(est: FleetEstimator, gpu_count: int) -> list[InstanceShape]:
    """Shapes within ``gpu_count`` that hold the model; raise with the GPUs needed if none."""
    shapes = [s for s in enumerate_shapes(est.model, gpu_count) if est.fit(s).fits]
    if shapes:
        return shapes
    bigger = enumerate_shapes(est.model, _MAX_SEARCH_GPUS)
    fitting = sorted((s for s in bigger if est.fit(s).fits), key=lambda s: (s.gpus, s.pp))
    m, g = est.model, est.gpu
    what = (
        f"model {m.name!r} ({m.weight_bytes / 1e9:.0f} GB of weights, "
        f"{est.context_tokens} tokens of context) fits on no layout of {gpu_count} x {g.name} "
        f"({g.memory_gb:g} GB)"
    )
    if not fitting:
        raise NoFeasibleLayoutError(f"{what}, not even with {_MAX_SEARCH_GPUS} GPUs")
    need = fitting[0]
    raise NoFeasibleLayoutError(
        f"{what}; it needs at least {need.gpus} GPUs (e.g. {need.label})", gpus_needed=need.gpus
    )


def general(shape: InstanceShape, replicas: int) -> Layout:
    return Layout(pools=(Pool(role=Role.GENERAL, shape=shape, replicas=replicas),))


def disaggregated(pre: InstanceShape, np_: int, dec: InstanceShape, nd: int) -> Layout:
    return Layout(
        pools=(
            Pool(role=Role.PREFILL, shape=pre, replicas=np_),
            Pool(role=Role.DECODE, shape=dec, replicas=nd),
        )
    )


def exhaustive_layouts(
    est: FleetEstimator, gpu_count: int, objective: Objective, allow_pd: bool
) -> Iterator[Layout]:
    """Every general layout (any replica count) and every prefill/decode pairing.

    For objectives other than min_gpus a disaggregated layout gives the decode pool all GPUs
    the prefill pool leaves (idle GPUs never raise rate or lower latency in this model).
    """
    shapes = fitting_shapes(est, gpu_count)
    for s in shapes:
        for r in range(1, gpu_count // s.gpus + 1):
            yield general(s, r)
    if not allow_pd:
        return
    for p in shapes:
        for d in shapes:
            for np_ in range(1, (gpu_count - d.gpus) // p.gpus + 1):
                left = (gpu_count - np_ * p.gpus) // d.gpus
                counts = range(1, left + 1) if objective is Objective.MIN_GPUS else [left]
                for nd in counts:
                    yield disaggregated(p, np_, d, nd)


def pruned_layouts(
    est: FleetEstimator, gpu_count: int, objective: Objective, allow_pd: bool
) -> Iterator[Layout]:
    """The planner's shortlist (a few dozen layouts instead of thousands)."""
    shapes = fitting_shapes(est, gpu_count)
    w = est.workload
    rate = w.rate_rps
    for s in shapes:
        if objective is Objective.MIN_GPUS and rate is not None:
            one = est.evaluate(general(s, 1))
            per = one.goodput_rps
            need = math.ceil(rate / per) if per > 0 else gpu_count + 1
            yield general(s, max(1, min(need, gpu_count // s.gpus)))
        else:
            yield general(s, gpu_count // s.gpus)
    if not allow_pd or gpu_count < 2:
        return
    pre = _shortlist(est, shapes, Role.PREFILL, objective)
    dec = _shortlist(est, shapes, Role.DECODE, objective)
    for p, cap_p in pre:
        for d, cap_d in dec:
            if p.gpus + d.gpus > gpu_count:
                continue
            if objective is Objective.MIN_GPUS and rate is not None:
                np_, nd = math.ceil(rate / cap_p), math.ceil(rate / cap_d)
                # capacity is an upper bound; SLO headroom may need one more of each
                for a, b in ((np_, nd), (np_ + 1, nd), (np_, nd + 1), (np_ + 1, nd + 1)):
                    if a * p.gpus + b * d.gpus <= gpu_count:
                        yield disaggregated(p, a, d, b)
                continue
            # GPUs split so that prefill and decode capacity match
            share_p = (p.gpus / cap_p) / (p.gpus / cap_p + d.gpus / cap_d)
            ideal = share_p * gpu_count / p.gpus
            for np_ in {math.floor(ideal), math.ceil(ideal), math.floor(ideal) - 1}:
                if np_ >= 1:
                    nd = (gpu_count - np_ * p.gpus) // d.gpus
                    if nd >= 1:
                        yield disaggregated(p, np_, d, nd)


def _shortlist(
    est: FleetEstimator, shapes: list[InstanceShape], role: Role, objective: Objective
) -> list[tuple[InstanceShape, float]]:
    """Best shapes for one role: capacity per GPU among those that can meet the SLO alone
    (for the latency objective: the fastest ones)."""
    w = est.workload
    rows: list[tuple[float, InstanceShape, float]] = []
    for s in shapes:
        pm = est.pool(s, role)
        cap = pm.capacity_rps()
        if cap <= 0:
            continue
        idle = pm.at_rate(cap * 1e-6)
        if role is Role.PREFILL:
            lat = float(idle.ttft_s.mean()) * 1e3
            ok = w.ttft_slo_ms is None or lat <= w.ttft_slo_ms
        else:
            lat = idle.tpot_s * 1e3 * w.mean_output
            ok = w.tpot_slo_ms is None or idle.tpot_s * 1e3 <= w.tpot_slo_ms
        if not ok:
            continue
        key = -lat if objective is Objective.LATENCY else cap / s.gpus
        rows.append((key, s, cap))
    rows.sort(key=lambda r: r[0], reverse=True)
    return [(s, cap) for _, s, cap in rows[:SHORTLIST]]
