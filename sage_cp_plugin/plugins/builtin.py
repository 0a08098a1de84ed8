"""The built-in policies, routers and parallelism strategies, registered like any plugin."""

from __future__ import annotations

from sage_cp_plugin.plugins.hookspecs import Register, hookimpl


@hookimpl
def sage_cp_register_policies(register: Register) -> None:
    from sage_cp_plugin.policies import BUILTIN_POLICIES

    for name, factory in BUILTIN_POLICIES.items():
        register(name, factory)


@hookimpl
def sage_cp_register_routers(register: Register) -> None:
    from sage_cp_plugin.routing import BUILTIN_ROUTERS

    for name, factory in BUILTIN_ROUTERS.items():
        register(name, factory)
    from sage_cp_plugin.experiments.router import ExperimentRouter

    register(ExperimentRouter.name, ExperimentRouter)  # A/B experiments (experiments/)


@hookimpl
def sage_cp_register_parallelism_strategies(register: Register) -> None:
    from sage_cp_plugin.parallelism import register_builtin_strategies

    register_builtin_strategies(register)
