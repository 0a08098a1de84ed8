"""sage-cp-plugin: a control plane for fleets of vLLM inference servers.

The public names of the sageLLM Control Plane document, plus ours (see DESIGN.md §4).
"""

from __future__ import annotations

from sage_cp_plugin.config import ControlPlaneConfig, open_control_plane
from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.parallelism import ParallelismOptimizer
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
    "AdaptivePolicy",
    "ControlPlaneConfig",
    "ControlPlaneManager",
    "CostOptimizedPolicy",
    "DecodingConfig",
    "ExecutionCoordinator",
    "ExecutionInstance",
    "ExecutionInstanceType",
    "FIFOPolicy",
    "LoadBalancer",
    "PDRoutingStrategy",
    "PDSeparationConfig",
    "ParallelismConfig",
    "ParallelismOptimizer",
    "ParallelismType",
    "PerformanceMetrics",
    "PrefillingConfig",
    "PriorityPolicy",
    "RequestKind",
    "RequestMetadata",
    "RequestPriority",
    "RequestResult",
    "RequestRouter",
    "RequestStatus",
    "SLOAwarePolicy",
    "SchedulingDecision",
    "SchedulingPolicy",
    "open_control_plane",
]
