"""The built-in policies, routers, parallelism strategies, discovery sources and actuators,
registered like any plugin."""

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


@hookimpl
def sage_cp_register_discovery_sources(register: Register) -> None:
    from sage_cp_plugin.elastic.discovery import FileSource, StaticSource
    from sage_cp_plugin.elastic.kubernetes import KubernetesPodSource

    register("static", StaticSource)
    register("file", FileSource)
    register("kubernetes", KubernetesPodSource)


@hookimpl
def sage_cp_register_actuators(register: Register) -> None:
    from sage_cp_plugin.elastic.actuators import BUILTIN_ACTUATORS

    for name, factory in BUILTIN_ACTUATORS.items():
        register(name, factory)
