"""The sageLLM document's ``ParallelismOptimizer``, backed by the roofline planner.

``recommend_strategy(model_size_gb, gpu_count, gpu_memory_gb)`` and
``optimize_hybrid_config(gpu_count)`` keep the document's signatures and meaning (a layout
for the whole GPU set, as TP/PP/DP sizes), but the answer comes from the planner instead of
thresholds. The document gives only sizes, so the optimizer assumes a Llama-shaped dense model
of that size, an H100-class GPU with that much memory, and a chat workload (1024 prompt and
256 output tokens) judged by goodput under interactive SLOs (TTFT 1 s, TPOT 50 ms); if no
layout meets them it falls back to throughput. All of these are constructor options.
"""

from __future__ import annotations

from sage_cp_plugin.parallelism.errors import PlanningError
from sage_cp_plugin.parallelism.gpu_spec import GPUSpec, get_gpu_spec
from sage_cp_plugin.parallelism.model_spec import ModelSpec, get_model_spec
from sage_cp_plugin.parallelism.objectives import Objective
from sage_cp_plugin.parallelism.plan import Plan
from sage_cp_plugin.parallelism.planner import RooflinePlanner
from sage_cp_plugin.parallelism.strategy import ParallelismStrategy, PlanRequest
from sage_cp_plugin.parallelism.workload import WorkloadSpec, load_workload
from sage_cp_plugin.types import ParallelismConfig


class ParallelismOptimizer:
    def __init__(
        self,
        *,
        model: str | ModelSpec = "Llama-3.3-70B",
        gpu: str | GPUSpec = "H100",
        workload: str | WorkloadSpec = "1024:256",
        ttft_slo_ms: float | None = 1000.0,
        tpot_slo_ms: float | None = 50.0,
        strategy: ParallelismStrategy | None = None,
    ) -> None:
        self.model = get_model_spec(model)
        self.gpu = get_gpu_spec(gpu)
        self.workload = load_workload(workload, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms)
        self.strategy: ParallelismStrategy = strategy or RooflinePlanner()

    def plan(
        self,
        gpu_count: int,
        *,
        model: ModelSpec | None = None,
        gpu: GPUSpec | None = None,
        objective: Objective | None = None,
        allow_disaggregation: bool = True,
    ) -> Plan:
        """The full ranked plan (goodput first, throughput when nothing meets the SLOs)."""
        if gpu_count <= 0:
            raise PlanningError(f"gpu_count={gpu_count} must be > 0")
        wanted = objective or (Objective.GOODPUT if self.workload.has_slo else Objective.THROUGHPUT)
        req = PlanRequest(
            model=model or self.model,
            gpu=gpu or self.gpu,
            gpu_count=gpu_count,
            workload=self.workload,
            objective=wanted,
            allow_disaggregation=allow_disaggregation,
        )
        plan = self.strategy.plan(req)
        if wanted is Objective.GOODPUT and plan.best.estimate.goodput_rps <= 0:
            plan = self.strategy.plan(req.model_copy(update={"objective": Objective.THROUGHPUT}))
        return plan

    def recommend_strategy(
        self, model_size_gb: float, gpu_count: int, gpu_memory_gb: float
    ) -> ParallelismConfig:
        """Best layout for a dense model of ``model_size_gb`` (fp16/bf16 weights) on
        ``gpu_count`` GPUs of ``gpu_memory_gb`` each.

        General pools only, so that TP x PP x DP describes the whole layout as the document's
        ``ParallelismConfig`` does; ``plan()`` also considers prefill/decode pools."""
        if model_size_gb <= 0:
            raise PlanningError(f"model_size_gb={model_size_gb} must be > 0")
        if gpu_memory_gb <= 0:
            raise PlanningError(f"gpu_memory_gb={gpu_memory_gb} must be > 0")
        model = ModelSpec.dense_from_size(model_size_gb)
        gpu = self.gpu.model_copy(
            update={"name": f"{self.gpu.name}-{gpu_memory_gb:g}GB", "memory_gb": gpu_memory_gb}
        )
        plan = self.plan(gpu_count, model=model, gpu=gpu, allow_disaggregation=False)
        return plan.best.to_parallelism_config()

    def optimize_hybrid_config(self, gpu_count: int) -> tuple[int, int, int]:
        """(tp, pp, dp) for the optimizer's model on ``gpu_count`` GPUs, general pools only
        (a TP x PP x DP triple cannot describe separate prefill and decode pools)."""
        cfg = self.plan(gpu_count, allow_disaggregation=False).best.to_parallelism_config()
        return cfg.tensor_parallel_size, cfg.pipeline_parallel_size, cfg.data_parallel_size
