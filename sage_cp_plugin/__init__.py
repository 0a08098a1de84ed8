"""sage-cp-plugin: a control plane for fleets of vLLM inference servers.

The public names of the sageLLM Control Plane document, plus ours (see docs/architecture.md §4).
"""

from __future__ import annotations

from sage_cp_plugin.config import ControlPlaneConfig, open_control_plane
from sage_cp_plugin.errors import (
    AdmissionError,
    ConfigurationError,
    ControlPlaneError,
    DuplicateInstanceError,
    InvalidRequestBodyError,
    ModelNotServedError,
    NoInstanceError,
    PluginConflictError,
    QueueFullError,
    RequestIdInUseError,
    RequestRejectedError,
    RequestTimeoutError,
    RetryLaterError,
    UnknownPluginError,
    UpstreamError,
)
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
    "AdmissionError",
    "ConfigurationError",
    "ControlPlaneConfig",
    "ControlPlaneError",
    "ControlPlaneManager",
    "CostOptimizedPolicy",
    "DecodingConfig",
    "DuplicateInstanceError",
    "ExecutionCoordinator",
    "ExecutionInstance",
    "ExecutionInstanceType",
    "FIFOPolicy",
    "InvalidRequestBodyError",
    "LoadBalancer",
    "ModelNotServedError",
    "NoInstanceError",
    "PDRoutingStrategy",
    "PDSeparationConfig",
    "ParallelismConfig",
    "ParallelismOptimizer",
    "ParallelismType",
    "PerformanceMetrics",
    "PluginConflictError",
    "PrefillingConfig",
    "PriorityPolicy",
    "QueueFullError",
    "RequestIdInUseError",
    "RequestKind",
    "RequestMetadata",
    "RequestPriority",
    "RequestRejectedError",
    "RequestResult",
    "RequestRouter",
    "RequestStatus",
    "RequestTimeoutError",
    "RetryLaterError",
    "SLOAwarePolicy",
    "SchedulingDecision",
    "SchedulingPolicy",
    "UnknownPluginError",
    "UpstreamError",
    "open_control_plane",
]
