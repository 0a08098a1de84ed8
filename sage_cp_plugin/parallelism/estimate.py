"""From step times to fleet metrics: TTFT, TPOT, sustainable rate and goodput.

Queueing: prompts wait for a prefill slot as in an M/G/1 queue (Pollaczek-Khinchine:
Wq = lambda E[S^2] / (2 (1 - rho))). Decoding: the running batch follows Little's law,
C = lambda x output_tokens x TPOT(C), solved by fixed-point iteration; a colocated instance
time-shares prefill and decode, so its TPOT stretches by 1 / (1 - rho_prefill) (the
prefill-decode interference DistServe, OSDI'24, measures). Goodput is DistServe's: the
highest rate at which the SLO attainment target (90 %) still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from sage_cp_plugin.parallelism import communication as comm
from sage_cp_plugin.parallelism.gpu_spec import GPUSpec
from sage_cp_plugin.parallelism.layout import InstanceShape, Layout, Role, spans_nodes
from sage_cp_plugin.parallelism.memory import MAX_NUM_BATCHED_TOKENS, MemoryFit, memory_fit
from sage_cp_plugin.parallelism.model_spec import ModelSpec
from sage_cp_plugin.parallelism.roofline import Calibration, StepModel
from sage_cp_plugin.parallelism.workload import WorkloadSpec

FloatArray = npt.NDArray[np.float64]
_BISECT_STEPS = 18  # rate precision 2^-18 of the bracket: far below model error
_FIXED_POINT_STEPS = 40


@dataclass(frozen=True)
class PoolState:
    stable: bool
    ttft_s: FloatArray  # per workload sample, this pool's share
    tpot_s: float
    batch: float


class PoolModel:
    """One instance shape in one role, with per-sample prefill times precomputed."""

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        shape: InstanceShape,
        role: Role,
        workload: WorkloadSpec,
        cal: Calibration,
        fit: MemoryFit,
    ) -> None:
        self.shape, self.role, self.fit = shape, role, fit
        self.step = StepModel(model, gpu, shape, cal)
        inputs = workload.inputs.astype(np.float64)
        self.chunks = np.ceil(inputs / MAX_NUM_BATCHED_TOKENS)
        self.prefill_lat = self.step.prefill_latency_s(inputs)
        svc = self.step.prefill_service_s(inputs)
        self.es, self.es2 = float(np.mean(svc)), float(np.mean(svc * svc))
        self.out = workload.mean_output
        self.context = workload.mean_input + workload.mean_output / 2.0
        per_seq = workload.mean_input + workload.mean_output
        self.batch_cap = float(
            min(fit.max_seqs_per_rank * shape.pp, fit.kv_tokens_per_rank / per_seq)
        )

    def capacity_rps(self) -> float:
        """Upper bound of one instance's rate (all DP ranks), from service demands."""
        dp = self.shape.dp
        if self.role is Role.PREFILL:
            return dp / self.es
        cap = max(self.batch_cap, 1.0)
        decode_s = self.out / self.step.decode_tokens_per_s(cap, self.context)
        if self.role is Role.DECODE:
            return dp / decode_s
        return dp / (self.es + decode_s)

    def at_rate(self, rate: float) -> PoolState:
        """State of one instance receiving ``rate`` requests/s."""
        lam = rate / self.shape.dp
        rho = lam * self.es if self.role is not Role.DECODE else 0.0
        if rho >= 1.0 or self.batch_cap < 1.0:
            return PoolState(False, self.prefill_lat, float("inf"), float("inf"))
        wq = lam * self.es2 / (2.0 * (1.0 - rho)) if self.role is not Role.DECODE else 0.0
        if self.role is Role.PREFILL:
            return PoolState(True, wq + self.prefill_lat, 0.0, 0.0)
        share = 1.0 - rho
        batch, tpot, stable = 1.0, 0.0, True
        for _ in range(_FIXED_POINT_STEPS):
            tpot = self.step.tpot_s(batch, self.context) / share
            new = max(1.0, lam * self.out * tpot)
            if new > self.batch_cap:
                stable = False
                break
            if abs(new - batch) <= 1e-3 * batch:
                batch = new
                break
            batch = new
        # The batch can grow to its cap: beyond that token rate the queue grows without bound.
        tps = self.step.decode_tokens_per_s(self.batch_cap, self.context)
        if lam * self.out > tps * share:
            stable = False
        tpot = self.step.tpot_s(batch, self.context) / share
        if self.role is Role.DECODE:
            return PoolState(stable, np.full_like(self.prefill_lat, tpot), tpot, batch)
        ttft = wq + self.prefill_lat + self.chunks * self.step.tpot_s(batch, self.context)
        return PoolState(stable, ttft, tpot, batch)


class LayoutEstimate(BaseModel):
    """What a layout is expected to deliver (times in ms, rates in requests/s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_rps: float
    stable: bool
    ttft_ms_mean: float
    ttft_ms_p90: float
    tpot_ms: float
    e2e_ms_mean: float
    slo_attainment: float
    max_rate_rps: float
    throughput_tok_s: float
    goodput_rps: float
    gpus: int
    goodput_rps_per_gpu: float
    throughput_tok_s_per_gpu: float
    decode_memory_bound: bool
    tp_crosses_nodes: bool
    weights_gb_per_gpu: float
    kv_tokens_per_rank: int


class FleetEstimator:
    """Evaluates layouts for one model, GPU and workload, caching per-shape models."""

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        workload: WorkloadSpec,
        cal: Calibration | None = None,
    ) -> None:
        self.model, self.gpu, self.workload = model, gpu, workload
        self.cal = cal or Calibration()
        ctx = workload.inputs + workload.outputs
        self.context_tokens = int(min(model.max_context, np.quantile(ctx, 0.99)))
        self._fits: dict[InstanceShape, MemoryFit] = {}
        self._pools: dict[tuple[InstanceShape, Role], PoolModel] = {}
        self.kv_bytes = workload.inputs.astype(np.float64) * model.kv_bytes_per_token()
        self.evaluations = 0

    def fit(self, shape: InstanceShape) -> MemoryFit:
        if shape not in self._fits:
            self._fits[shape] = memory_fit(self.model, self.gpu, shape, self.context_tokens)
        return self._fits[shape]

    def pool(self, shape: InstanceShape, role: Role) -> PoolModel:
        key = (shape, role)
        if key not in self._pools:
            self._pools[key] = PoolModel(
                self.model, self.gpu, shape, role, self.workload, self.cal, self.fit(shape)
            )
        return self._pools[key]

    # -- one operating point ----------------------------------------------------------------
    def point(self, layout: Layout, rate: float) -> tuple[bool, FloatArray, float]:
        """(stable, TTFT per sample in s, TPOT in s) of the whole layout at ``rate``."""
        if not layout.disaggregated:
            p = layout.pools[0]
            st = self.pool(p.shape, Role.GENERAL).at_rate(rate / p.replicas)
            return st.stable, st.ttft_s, st.tpot_s
        pre, dec = layout.pools
        sp = self.pool(pre.shape, Role.PREFILL).at_rate(rate / pre.replicas)
        sd = self.pool(dec.shape, Role.DECODE).at_rate(rate / dec.replicas)
        cross = spans_nodes(layout.gpus, self.gpu)
        xfer = comm.kv_transfer_s(self.gpu, self.kv_bytes, cross, pre.shape.tp * pre.shape.pp)
        return sp.stable and sd.stable, sp.ttft_s + xfer + sd.tpot_s, sd.tpot_s

    def attainment(self, layout: Layout, rate: float) -> float:
        stable, ttft, tpot = self.point(layout, rate)
        if not stable:
            return 0.0
        w = self.workload
        ok = np.ones_like(ttft, dtype=bool)
        if w.ttft_slo_ms is not None:
            ok &= ttft * 1e3 <= w.ttft_slo_ms
        if w.tpot_slo_ms is not None and tpot * 1e3 > w.tpot_slo_ms:
            ok &= False
        return float(np.mean(ok))

    def capacity_bound(self, layout: Layout) -> float:
        caps = [
            p.replicas
            * self.pool(p.shape, p.role if layout.disaggregated else Role.GENERAL).capacity_rps()
            for p in layout.pools
        ]
        return min(caps)

    def max_rate(self, layout: Layout) -> float:
        """Highest stable rate (bisection under the service-demand bound)."""
        lo, hi = 0.0, self.capacity_bound(layout)
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2.0
            if self.point(layout, mid)[0]:
                lo = mid
            else:
                hi = mid
        return lo

    def goodput(self, layout: Layout, max_rate: float) -> float:
        w = self.workload
        if not w.has_slo:
            return max_rate
        lo, hi = 0.0, max_rate
        if self.attainment(layout, hi * 1e-6 or 1e-9) < w.attainment_target:
            return 0.0
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2.0
            if self.attainment(layout, mid) >= w.attainment_target:
                lo = mid
            else:
                hi = mid
        return lo

    # -- the full estimate --------------------------------------------------------------------
    def evaluate(self, layout: Layout) -> LayoutEstimate:
        self.evaluations += 1
        w = self.workload
        max_rate = self.max_rate(layout)
        good = self.goodput(layout, max_rate)
        # Without a target rate latency is quoted for an idle fleet (one request at a time).
        rate = w.rate_rps if w.rate_rps is not None else max(max_rate, 1e-9) * 1e-6
        stable, ttft, tpot = self.point(layout, rate)
        att = self.attainment(layout, rate) if w.has_slo else (1.0 if stable else 0.0)
        first = layout.pools[-1]
        step = self.pool(first.shape, first.role if layout.disaggregated else Role.GENERAL).step
        gpus = layout.gpus
        ttft_ms = ttft * 1e3
        return LayoutEstimate(
            rate_rps=rate,
            stable=stable,
            ttft_ms_mean=float(np.mean(ttft_ms)),
            ttft_ms_p90=float(np.quantile(ttft_ms, 0.9)),
            tpot_ms=tpot * 1e3,
            e2e_ms_mean=float(np.mean(ttft_ms)) + tpot * 1e3 * max(w.mean_output - 1.0, 0.0),
            slo_attainment=att,
            max_rate_rps=max_rate,
            throughput_tok_s=max_rate * w.mean_output,
            goodput_rps=good,
            gpus=gpus,
            goodput_rps_per_gpu=good / gpus,
            throughput_tok_s_per_gpu=max_rate * w.mean_output / gpus,
            decode_memory_bound=step.decode_is_memory_bound(
                min(max(1.0, step.shape.dp), 64.0), w.mean_input
            ),
            tp_crosses_nodes=any(spans_nodes(p.shape.tp, self.gpu) for p in layout.pools),
            weights_gb_per_gpu=max(self.fit(p.shape).weights_gb for p in layout.pools),
            kv_tokens_per_rank=min(self.fit(p.shape).kv_tokens_per_rank for p in layout.pools),
        )
