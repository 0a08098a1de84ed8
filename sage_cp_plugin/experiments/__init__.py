"""A/B experiments: arms with traffic shares, sticky assignment, per-arm routing and reports
(docs/policy-lab.md)."""

from __future__ import annotations

from sage_cp_plugin.experiments.arms import ArmConfig, ExperimentConfig, assign_arm

__all__ = ["ArmConfig", "ExperimentConfig", "assign_arm"]
