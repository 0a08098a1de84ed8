"""Plugin system: pluggy hookspecs, entry-point discovery and the name registry."""

from sage_cp_plugin.plugins.hookspecs import hookimpl, hookspec
from sage_cp_plugin.plugins.registry import (
    PluginLoadFailure,
    PluginRegistry,
    Registration,
    get_registry,
)

__all__ = [
    "PluginLoadFailure",
    "PluginRegistry",
    "Registration",
    "get_registry",
    "hookimpl",
    "hookspec",
]
