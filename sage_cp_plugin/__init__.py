"""sage-cp-plugin: a control plane for fleets of vLLM inference servers."""

from __future__ import annotations

from sage_cp_plugin.types import (
    DecodingConfig,
    ExecutionInstance,
    ExecutionInstanceType,
    ParallelismConfig,
    ParallelismType,
    PDSeparationConfig,
    PerformanceMetrics,
    PrefillingConfig,
    RequestKind,
    RequestMetadata,
    RequestPriority,
    RequestResult,
    RequestStatus,
    SchedulingDecision,
)

__version__ = "0.1.0"

__all__ = [
    "DecodingConfig",
    "ExecutionInstance",
    "ExecutionInstanceType",
    "PDSeparationConfig",
    "ParallelismConfig",
    "ParallelismType",
    "PerformanceMetrics",
    "PrefillingConfig",
    "RequestKind",
    "RequestMetadata",
    "RequestPriority",
    "RequestResult",
    "RequestStatus",
    "SchedulingDecision",
]

from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.policies import (
    AdaptivePolicy,
    CostOptimizedPolicy,
    FIFOPolicy,
    PriorityPolicy,
    SchedulingPolicy,
    SLOAwarePolicy,
)
from sage_cp_plugin.routing import PDRoutingStrategy
from sage_cp_plugin.routing.facade import LoadBalancer, RequestRouter

__all__ += [
    "AdaptivePolicy",
    "ControlPlaneManager",
    "CostOptimizedPolicy",
    "ExecutionCoordinator",
    "FIFOPolicy",
    "LoadBalancer",
    "PDRoutingStrategy",
    "PriorityPolicy",
    "RequestRouter",
    "SLOAwarePolicy",
    "SchedulingPolicy",
]
