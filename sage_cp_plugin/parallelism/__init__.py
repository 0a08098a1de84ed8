"""Parallelism planning (TP/PP/DP/EP layouts). Filled in by the planner work (issue 6)."""

from __future__ import annotations

from sage_cp_plugin.plugins.hookspecs import Register


def register_builtin_strategies(register: Register) -> None:
    """Register the built-in parallelism strategies with the plugin registry."""
