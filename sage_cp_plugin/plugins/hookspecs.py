"""The hooks a sage-cp plugin may implement (entry-point group ``sage_cp``).

Each hook receives a ``register(name, factory)`` callable, in the style of simonw/llm.
A plugin package declares::

    [project.entry-points.sage_cp]
    my_plugin = "my_pkg.plugin"

and implements any of these hooks in ``my_pkg.plugin`` with ``@hookimpl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "sage_cp"
ENTRY_POINT_GROUP = "sage_cp"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def sage_cp_register_policies(register: Register) -> None:
    """Register scheduling policies.

    ``register(name, factory)``: ``factory(**options)`` returns a
    :class:`sage_cp_plugin.policies.SchedulingPolicy`. ``options`` come from the
    configuration (``policy_options``) and are passed as keyword arguments.
    """


@hookspec
def sage_cp_register_routers(register: Register) -> None:
    """Register routing strategies.

    ``register(name, factory)``: ``factory(**options)`` returns a
    :class:`sage_cp_plugin.routing.Router`.
    """


@hookspec
def sage_cp_register_parallelism_strategies(register: Register) -> None:
    """Register parallelism planners.

    ``register(name, factory)``: ``factory(**options)`` returns a
    :class:`sage_cp_plugin.parallelism.ParallelismStrategy`.
    """


@hookspec
def sage_cp_register_discovery_sources(register: Register) -> None:
    """Register discovery sources (docs/elastic-fleet.md).

    ``register(name, factory)``: ``factory(**options)`` returns an object with ``name`` and
    ``async run(publish)`` (:class:`sage_cp_plugin.elastic.discovery.DiscoverySource`).
    """


@hookspec
def sage_cp_register_actuators(register: Register) -> None:
    """Register scaling actuators (docs/elastic-fleet.md).

    ``register(name, factory)``: ``factory(**options)`` returns an
    :class:`sage_cp_plugin.elastic.actuators.Actuator`.
    """
