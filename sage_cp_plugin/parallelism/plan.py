"""The planner's answer: ranked layouts with estimates, flags and instance definitions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.parallelism.estimate import LayoutEstimate
from sage_cp_plugin.parallelism.layout import Layout, Pool, Role
from sage_cp_plugin.parallelism.memory import MemoryFit
from sage_cp_plugin.parallelism.vllm_flags import execution_instances, vllm_args, vllm_command
from sage_cp_plugin.types import ExecutionInstance, ParallelismConfig, ParallelismType


class PoolPlan(BaseModel):
    """One pool of identical instances and how to start each of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    replicas: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    expert_parallel_size: int
    gpus_per_instance: int
    weights_gb_per_gpu: float
    kv_cache_gb_per_gpu: float
    kv_tokens_per_rank: int
    vllm_args: list[str]
    vllm_commands: list[str]

    @classmethod
    def build(cls, pool: Pool, fit: MemoryFit, serve_name: str, first_port: int) -> PoolPlan:
        s = pool.shape
        return cls(
            role=pool.role,
            replicas=pool.replicas,
            tensor_parallel_size=s.tp,
            pipeline_parallel_size=s.pp,
            data_parallel_size=s.dp,
            expert_parallel_size=s.ep_size,
            gpus_per_instance=s.gpus,
            weights_gb_per_gpu=round(fit.weights_gb, 2),
            kv_cache_gb_per_gpu=round(fit.kv_gb, 2),
            kv_tokens_per_rank=fit.kv_tokens_per_rank,
            vllm_args=vllm_args(pool),
            vllm_commands=[
                vllm_command(serve_name, pool, first_port + i) for i in range(pool.replicas)
            ],
        )


class Candidate(BaseModel):
    """One ranked layout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int
    label: str
    layout: Layout
    pools: list[PoolPlan]
    estimate: LayoutEstimate
    score: list[float]
    fits: bool = True
    note: str = ""

    @property
    def disaggregated(self) -> bool:
        return self.layout.disaggregated

    @property
    def main_pool(self) -> PoolPlan:
        """The general pool, or the decode pool of a disaggregated layout."""
        return self.pools[-1]

    def execution_instances(
        self,
        model_name: str,
        *,
        host: str = "localhost",
        first_port: int = 8000,
        gpu_memory_gb: float = 0.0,
    ) -> list[ExecutionInstance]:
        out: list[ExecutionInstance] = []
        port = first_port
        for pool in self.layout.pools:
            out += execution_instances(
                model_name,
                pool,
                first_port=port,
                host=host,
                gpu_memory_gb=gpu_memory_gb,
            )
            port += pool.replicas
        return out

    def to_parallelism_config(self) -> ParallelismConfig:
        """The document's ``ParallelismConfig`` view of this layout (main pool sizes)."""
        p = self.main_pool
        dp = p.replicas * p.data_parallel_size
        used = [
            t
            for t, n in (
                (ParallelismType.TENSOR_PARALLEL, p.tensor_parallel_size),
                (ParallelismType.PIPELINE_PARALLEL, p.pipeline_parallel_size),
                (ParallelismType.DATA_PARALLEL, dp),
                (ParallelismType.EXPERT_PARALLEL, p.expert_parallel_size),
            )
            if n > 1
        ]
        strategy = (
            used[0]
            if len(used) == 1
            else (ParallelismType.HYBRID if used else ParallelismType.TENSOR_PARALLEL)
        )
        e = self.estimate
        return ParallelismConfig(
            strategy=strategy,
            tensor_parallel_size=p.tensor_parallel_size,
            pipeline_parallel_size=p.pipeline_parallel_size,
            data_parallel_size=dp,
            expert_parallel_size=p.expert_parallel_size,
            gpu_count=self.layout.gpus,
            reason=(
                f"{self.label}: est. TTFT {e.ttft_ms_mean:.0f} ms, TPOT {e.tpot_ms:.1f} ms, "
                f"{e.throughput_tok_s:.0f} output tok/s, goodput {e.goodput_rps:.2f} req/s"
            ),
        )


class Plan(BaseModel):
    """Ranked candidates plus what was asked and how long it took."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    model: str
    serve_name: str
    gpu: str
    gpu_count: int
    objective: str
    workload: dict[str, Any]
    candidates: list[Candidate] = Field(min_length=1)
    layouts_evaluated: int = 0
    planning_time_ms: float = 0.0

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def execution_instances(self, **kw: Any) -> list[ExecutionInstance]:
        return self.best.execution_instances(self.serve_name, **kw)
