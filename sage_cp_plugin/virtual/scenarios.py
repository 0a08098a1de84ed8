"""The benchmark scenarios by name (`sage-cp bench NAME`)."""

from __future__ import annotations

import importlib

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.virtual.bench import Scenario

_MODULES = {
    "pd_separation": "sage_cp_plugin.virtual.scenario_pd",
    "slo_classes": "sage_cp_plugin.virtual.scenario_slo",
    "prefix_multi_tenant": "sage_cp_plugin.virtual.scenario_prefix",
    "heterogeneous_failures": "sage_cp_plugin.virtual.scenario_failures",
    "scale": "sage_cp_plugin.virtual.scenario_scale",
}
NAMES = tuple(_MODULES)


def get_scenario(name: str) -> Scenario:
    try:
        module = importlib.import_module(_MODULES[name])
    except KeyError:
        raise ConfigurationError(f"unknown scenario {name!r}; known: {', '.join(NAMES)}") from None
    scenario = module.SCENARIO
    assert isinstance(scenario, Scenario)
    return scenario
