"""Discovers plugins through entry points and keeps the name -> factory tables.

Every plugin is loaded and called on its own: a plugin that fails to import or whose hook
raises is recorded (with its distribution) and skipped, so the others still work. Two
plugins registering one name is a conflict that is reported when that name is asked for,
naming both distributions; every other name stays usable.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import pluggy

from sage_cp_plugin.errors import ConfigurationError, PluginConflictError, UnknownPluginError
from sage_cp_plugin.plugins import hookspecs

logger = logging.getLogger(__name__)

Kind = Literal["policy", "router", "parallelism strategy", "discovery source", "actuator"]
KINDS: tuple[Kind, ...] = (
    "policy",
    "router",
    "parallelism strategy",
    "discovery source",
    "actuator",
)
_HOOK_OF_KIND: dict[Kind, str] = {
    "policy": "sage_cp_register_policies",
    "router": "sage_cp_register_routers",
    "parallelism strategy": "sage_cp_register_parallelism_strategies",
    "discovery source": "sage_cp_register_discovery_sources",
    "actuator": "sage_cp_register_actuators",
}
BUILTIN_DISTRIBUTION = "sage-cp-plugin"
BUILTIN_MODULE = "sage_cp_plugin.plugins.builtin"


@dataclass(frozen=True)
class Registration:
    kind: Kind
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str


@dataclass(frozen=True)
class PluginLoadFailure:
    plugin: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return (
            f"plugin {self.plugin!r} from distribution {self.distribution!r} failed: {self.error}"
        )


@dataclass
class PluginRegistry:
    """Name tables for policies, routers and parallelism strategies."""

    entries: dict[Kind, dict[str, Registration]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    conflicts: dict[tuple[Kind, str], list[Registration]] = field(default_factory=dict)
    failures: list[PluginLoadFailure] = field(default_factory=list)
    plugins: dict[str, str] = field(default_factory=dict)  # plugin name -> distribution

    def __post_init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        seen_builtin = False
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            if ep.value == BUILTIN_MODULE:
                if seen_builtin:
                    continue  # one project installed twice (editable + metadata copy)
                seen_builtin = True
                dist = BUILTIN_DISTRIBUTION
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must never take the others down
                self._fail(ep.name, dist, exc)
                continue
            self.register_plugin(module, name=ep.name, distribution=dist)
        if not seen_builtin:
            # Running from a source tree without installed metadata: the built-ins still load.
            from sage_cp_plugin.plugins import builtin

            self.register_plugin(builtin, name="builtin", distribution=BUILTIN_DISTRIBUTION)

    def register_plugin(self, plugin: ModuleType | object, *, name: str, distribution: str) -> None:
        """Register one plugin object (module or instance with ``@hookimpl`` methods)."""
        if name in self.plugins:
            name = f"{name}@{distribution}"
        try:
            self._pm.register(plugin, name=name)
        except Exception as exc:
            self._fail(name, distribution, exc)
            return
        self.plugins[name] = distribution
        for kind in KINDS:
            caller = getattr(self._pm.hook, _HOOK_OF_KIND[kind])
            for impl in caller.get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=self._registrar(kind, name, distribution))
                except Exception as exc:
                    self._fail(name, distribution, exc)

    def _registrar(self, kind: Kind, plugin: str, distribution: str) -> hookspecs.Register:
        def register(name: str, factory: Callable[..., Any]) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
            if not callable(factory):
                raise TypeError(f"{kind} {name!r}: factory {factory!r} is not callable")
            reg = Registration(kind, name, factory, plugin, distribution)
            table = self.entries[kind]
            if (kind, name) in self.conflicts:
                self.conflicts[(kind, name)].append(reg)
            elif name in table:
                self.conflicts[(kind, name)] = [table.pop(name), reg]
                logger.error("%s", self._conflict_message(kind, name))
            else:
                table[name] = reg

        return register

    def _fail(self, plugin: str, distribution: str, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        failure = PluginLoadFailure(plugin, distribution, detail)
        self.failures.append(failure)
        logger.error("sage_cp %s", failure)

    # -- lookup ----------------------------------------------------------------------------
    def names(self, kind: Kind) -> list[str]:
        return sorted([*self.entries[kind], *(n for k, n in self.conflicts if k == kind)])

    def get(self, kind: Kind, name: str) -> Registration:
        if (kind, name) in self.conflicts:
            raise PluginConflictError(self._conflict_message(kind, name))
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownPluginError(kind, name, self.names(kind)) from None

    def create(self, kind: Kind, name: str, **options: Any) -> Any:
        reg = self.get(kind, name)
        try:
            return reg.factory(**options)
        except TypeError as exc:
            raise ConfigurationError(
                f"{kind} {name!r} (from {reg.distribution}) rejected options {options!r}: {exc}"
            ) from exc

    def _conflict_message(self, kind: Kind, name: str) -> str:
        regs = self.conflicts[(kind, name)]
        who = " and ".join(f"plugin {r.plugin!r} of distribution {r.distribution!r}" for r in regs)
        return f"{kind} {name!r} is registered twice: by {who}; uninstall one of them"

    def rows(self) -> list[dict[str, str]]:
        """One row per registered name, for `sage-cp plugins`."""
        out: list[dict[str, str]] = []
        for kind in KINDS:
            for name, reg in sorted(self.entries[kind].items()):
                out.append(
                    {
                        "kind": kind,
                        "name": name,
                        "plugin": reg.plugin,
                        "distribution": reg.distribution,
                        "status": "ok",
                    }
                )
            for (k, name), regs in sorted(self.conflicts.items()):
                if k == kind:
                    for reg in regs:
                        out.append(
                            {
                                "kind": kind,
                                "name": name,
                                "plugin": reg.plugin,
                                "distribution": reg.distribution,
                                "status": "conflict",
                            }
                        )
        return out


_registry: PluginRegistry | None = None
_lock = threading.Lock()


def get_registry(*, reload: bool = False) -> PluginRegistry:
    """The process-wide registry, loaded from entry points on first use."""
    global _registry
    with _lock:
        if _registry is None or reload:
            reg = PluginRegistry()
            reg.load_entry_points()
            _registry = reg
        return _registry
