"""The planning question and the interface every parallelism-strategy plugin answers.

A plugin registers ``register(name, factory)`` in ``sage_cp_register_parallelism_strategies``;
``factory(**options)`` returns an object with ``name`` and ``plan(request) -> Plan``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sage_cp_plugin.parallelism.errors import PlanningError, planning_error_from
from sage_cp_plugin.parallelism.gpu_spec import GPUSpec, get_gpu_spec
from sage_cp_plugin.parallelism.model_spec import ModelSpec, get_model_spec
from sage_cp_plugin.parallelism.objectives import Objective, check_objective, parse_objective
from sage_cp_plugin.parallelism.plan import Plan
from sage_cp_plugin.parallelism.workload import WorkloadSpec, load_workload


class PlanRequest(BaseModel):
    """Model x GPUs x workload x objective: everything a strategy needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpec
    gpu: GPUSpec
    gpu_count: int = Field(gt=0)
    workload: WorkloadSpec
    objective: Objective = Objective.THROUGHPUT
    top_k: int = Field(default=5, gt=0)
    allow_disaggregation: bool = True

    @model_validator(mode="after")
    def _objective_has_targets(self) -> PlanRequest:
        check_objective(self.objective, self.workload)
        return self

    @classmethod
    def build(
        cls,
        *,
        model: str | ModelSpec,
        gpu: str | GPUSpec,
        gpu_count: int,
        workload: str | WorkloadSpec = "1024:256",
        objective: str | Objective | None = None,
        rate_rps: float | None = None,
        ttft_slo_ms: float | None = None,
        tpot_slo_ms: float | None = None,
        top_k: int = 5,
        allow_disaggregation: bool = True,
    ) -> PlanRequest:
        """Resolve presets by name. Without an objective: goodput when an SLO is given,
        throughput otherwise."""
        try:
            return cls._build(
                model=model,
                gpu=gpu,
                gpu_count=gpu_count,
                workload=workload,
                objective=objective,
                rate_rps=rate_rps,
                ttft_slo_ms=ttft_slo_ms,
                tpot_slo_ms=tpot_slo_ms,
                top_k=top_k,
                allow_disaggregation=allow_disaggregation,
            )
        except ValidationError as exc:
            raise planning_error_from(exc) from None

    @classmethod
    def _build(
        cls,
        *,
        model: str | ModelSpec,
        gpu: str | GPUSpec,
        gpu_count: int,
        workload: str | WorkloadSpec,
        objective: str | Objective | None,
        rate_rps: float | None,
        ttft_slo_ms: float | None,
        tpot_slo_ms: float | None,
        top_k: int,
        allow_disaggregation: bool,
    ) -> PlanRequest:
        if top_k <= 0:
            raise PlanningError(f"top_k={top_k} must be > 0")
        if gpu_count <= 0:
            raise PlanningError(f"gpu_count={gpu_count} must be > 0")
        if rate_rps is not None and rate_rps <= 0:
            raise PlanningError(f"rate_rps={rate_rps} must be > 0")
        w = load_workload(
            workload, rate_rps=rate_rps, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms
        )
        if objective is None:
            obj = Objective.GOODPUT if w.has_slo else Objective.THROUGHPUT
        else:
            obj = parse_objective(objective)
        return cls(
            model=get_model_spec(model),
            gpu=get_gpu_spec(gpu),
            gpu_count=gpu_count,
            workload=w,
            objective=obj,
            top_k=top_k,
            allow_disaggregation=allow_disaggregation,
        )


@runtime_checkable
class ParallelismStrategy(Protocol):
    name: str

    def plan(self, request: PlanRequest) -> Plan: ...
