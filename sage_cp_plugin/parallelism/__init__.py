"""Parallelism planning: which TP x PP x DP (x EP) layout, and prefill/decode split, to run.

Public API::

    from sage_cp_plugin.parallelism import ParallelismOptimizer, PlanRequest, RooflinePlanner
    plan = RooflinePlanner().plan(PlanRequest.build(model="Llama-3.3-70B", gpu="H100",
                                                   gpu_count=16, workload="azure_conv"))
    plan.best.pools[0].vllm_commands; plan.execution_instances()

Strategies are plugins (``sage_cp_register_parallelism_strategies``): ``roofline`` (the
planner) and ``rule_based`` (the sageLLM document's thresholds).
"""

from __future__ import annotations

from typing import Any

from sage_cp_plugin.parallelism.errors import (
    ContradictorySLOError,
    NoFeasibleLayoutError,
    PlanningError,
    UnknownPresetError,
)
from sage_cp_plugin.parallelism.estimate import FleetEstimator, LayoutEstimate
from sage_cp_plugin.parallelism.gpu_spec import GPU_PRESETS, GPUSpec, get_gpu_spec
from sage_cp_plugin.parallelism.layout import InstanceShape, Layout, Pool, Role
from sage_cp_plugin.parallelism.memory import MemoryFit, memory_fit
from sage_cp_plugin.parallelism.model_spec import MODEL_PRESETS, ModelSpec, get_model_spec
from sage_cp_plugin.parallelism.objectives import Objective
from sage_cp_plugin.parallelism.optimizer import ParallelismOptimizer
from sage_cp_plugin.parallelism.plan import Candidate, Plan, PoolPlan
from sage_cp_plugin.parallelism.planner import RooflinePlanner
from sage_cp_plugin.parallelism.roofline import Calibration
from sage_cp_plugin.parallelism.rule_based import RuleBasedStrategy, rule_based_sizes
from sage_cp_plugin.parallelism.strategy import ParallelismStrategy, PlanRequest
from sage_cp_plugin.parallelism.workload import TRACE_PRESETS, WorkloadSpec, load_workload
from sage_cp_plugin.plugins.hookspecs import Register

__all__ = [
    "GPU_PRESETS",
    "MODEL_PRESETS",
    "TRACE_PRESETS",
    "Calibration",
    "Candidate",
    "ContradictorySLOError",
    "FleetEstimator",
    "GPUSpec",
    "InstanceShape",
    "Layout",
    "LayoutEstimate",
    "MemoryFit",
    "ModelSpec",
    "NoFeasibleLayoutError",
    "Objective",
    "ParallelismOptimizer",
    "ParallelismStrategy",
    "Plan",
    "PlanRequest",
    "PlanningError",
    "Pool",
    "PoolPlan",
    "Role",
    "RooflinePlanner",
    "RuleBasedStrategy",
    "UnknownPresetError",
    "WorkloadSpec",
    "get_gpu_spec",
    "get_model_spec",
    "load_workload",
    "memory_fit",
    "register_builtin_strategies",
    "rule_based_sizes",
]


def _roofline(**options: Any) -> RooflinePlanner:
    return RooflinePlanner(**options)


def _rule_based(**options: Any) -> RuleBasedStrategy:
    return RuleBasedStrategy(**options)


def register_builtin_strategies(register: Register) -> None:
    """Register the built-in parallelism strategies with the plugin registry."""
    register("roofline", _roofline)
    register("rule_based", _rule_based)
