"""Scheduling policies: when a request runs (and for cost, where)."""

from __future__ import annotations

from collections.abc import Callable

from sage_cp_plugin.policies.adaptive import AdaptivePolicy, PolicySwitch
from sage_cp_plugin.policies.base import SchedulingPolicy, make_item
from sage_cp_plugin.policies.cost_optimized import CostOptimizedPolicy
from sage_cp_plugin.policies.fifo import FIFOPolicy
from sage_cp_plugin.policies.priority import PriorityPolicy
from sage_cp_plugin.policies.slo_aware import SLOAwarePolicy

BUILTIN_POLICIES: dict[str, Callable[..., SchedulingPolicy]] = {
    "fifo": FIFOPolicy,
    "priority": PriorityPolicy,
    "slo_aware": SLOAwarePolicy,
    "cost_optimized": CostOptimizedPolicy,
    "adaptive": AdaptivePolicy,
}

__all__ = [
    "BUILTIN_POLICIES",
    "AdaptivePolicy",
    "CostOptimizedPolicy",
    "FIFOPolicy",
    "PolicySwitch",
    "PriorityPolicy",
    "SLOAwarePolicy",
    "SchedulingPolicy",
    "make_item",
]
