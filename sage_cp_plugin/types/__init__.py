"""Public data types of the control plane (the names of the sageLLM Control Plane document).

Every type is a pydantic v2 model so bad input is rejected at the boundary with a message
that names the field and the bad value. Enums accept their member, their value and their
name (any case), because the document's examples use all three (`"prefilling"`,
`"PREFILLING"`, `ExecutionInstanceType.PREFILLING`).
"""

from sage_cp_plugin.types.base import StrictModel
from sage_cp_plugin.types.enums import (
    ExecutionInstanceType,
    ParallelismType,
    RequestKind,
    RequestPriority,
    RequestStatus,
)
from sage_cp_plugin.types.instance import (
    DecodingConfig,
    ExecutionInstance,
    ParallelismConfig,
    PDSeparationConfig,
    PrefillingConfig,
)
from sage_cp_plugin.types.metrics import PerformanceMetrics
from sage_cp_plugin.types.request import (
    SLO,
    RequestMetadata,
    RequestResult,
    RequestTimings,
    SchedulingDecision,
)

__all__ = [
    "SLO",
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
    "RequestTimings",
    "SchedulingDecision",
    "StrictModel",
]
