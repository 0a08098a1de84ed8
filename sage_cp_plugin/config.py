"""`ControlPlaneConfig`: one validated description of a control plane and its fleet.

Given as an object, a dict, or a YAML/TOML file; used by the gateway (`sage-cp serve`), the
batch job (`sage-cp batch`) and the SAGE service. With no instances it describes the
embedded simulated fleet (docs/architecture.md §8), so every entry point runs on a fresh machine.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.executor import ExecutionCoordinator, TransportFactory
from sage_cp_plugin.health import HealthConfig
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.options import ControlPlaneOptions, build_options, validation_message
from sage_cp_plugin.types import ExecutionInstance

# The health settings of a file are the manager's own model (one definition, one default).
HealthSettings = HealthConfig


class EmbeddedFleetSettings(BaseModel):
    """The built-in simulated fleet used when no instances are configured."""

    model_config = ConfigDict(extra="forbid")

    time_scale: float = Field(1.0, ge=0)
    generation_instances: int = Field(2, ge=0)
    embedding_instances: int = Field(1, ge=0)


class ControlPlaneConfig(ControlPlaneOptions):
    """Every `ControlPlaneOptions` setting, plus the fleet: `instances`, or the embedded
    simulated fleet when there are none."""

    model_config = ConfigDict(extra="forbid")

    instances: list[ExecutionInstance] = Field(default_factory=list)
    embedded_fleet: EmbeddedFleetSettings = Field(default_factory=EmbeddedFleetSettings)

    @model_validator(mode="after")
    def _unique_ids(self) -> ControlPlaneConfig:
        seen: set[str] = set()
        for inst in self.instances:
            if inst.instance_id in seen:
                raise ValueError(f"instances: instance_id {inst.instance_id!r} appears twice")
            seen.add(inst.instance_id)
        return self

    @property
    def uses_embedded_fleet(self) -> bool:
        return not self.instances

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls, source: ControlPlaneConfig | dict[str, Any] | str | Path | None
    ) -> ControlPlaneConfig:
        """From an object, a dict, or a .yaml/.yml/.toml/.json file; None -> defaults."""
        if source is None:
            return cls()
        if isinstance(source, ControlPlaneConfig):
            return source
        if isinstance(source, dict):
            return cls._validate(source, "the configuration")
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read config file {str(path)!r}: {exc.strerror or exc}"
            ) from exc
        try:
            if path.suffix.lower() == ".toml":
                data: Any = tomllib.loads(text)
            else:
                data = yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
            raise ConfigurationError(
                f"config file {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: {exc}"
            ) from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigurationError(
                f"config file {str(path)!r} must hold a mapping at the top, got {type(data).__name__}"
            )
        return cls._validate(data, f"config file {str(path)!r}")

    @classmethod
    def _validate(cls, data: dict[str, Any], where: str) -> ControlPlaneConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(f"{where} is invalid: {validation_message(exc)}") from exc

    # -- building --------------------------------------------------------------------------
    def options(self, **overrides: Any) -> ControlPlaneOptions:
        """The coordinator's settings of this configuration, with `overrides` applied."""
        mine = {name: getattr(self, name) for name in ControlPlaneOptions.model_fields}
        return build_options("ControlPlaneConfig overrides", **{**mine, **overrides})

    def build_manager(
        self,
        *,
        executor: ExecutionCoordinator | None = None,
        transport_factory: TransportFactory | None = None,
        **overrides: Any,
    ) -> ControlPlaneManager:
        """A manager with this configuration and its instances registered (not started)."""
        manager = ControlPlaneManager(
            executor=executor,
            transport_factory=transport_factory,
            options=self.options(**overrides),
        )
        for inst in self.instances:
            manager.register_instance(inst.model_copy())
        return manager

    def embedded_sim_configs(self) -> list[Any]:
        from sage_cp_plugin.sim import SimInstanceConfig, embedded_default_fleet

        base = embedded_default_fleet(time_scale=self.embedded_fleet.time_scale)
        gen = [c for c in base if c.role != "embedding"][:1]
        emb = [c for c in base if c.role == "embedding"][:1]
        out: list[SimInstanceConfig] = []
        for i in range(self.embedded_fleet.generation_instances):
            out.append(gen[0].model_copy(update={"seed": i}))
        for i in range(self.embedded_fleet.embedding_instances):
            out.append(emb[0].model_copy(update={"seed": 100 + i}))
        return out


def sim_instances(members: list[Any], **fields: Any) -> list[ExecutionInstance]:
    """`ExecutionInstance`s (`sim-<index>`) for the members of a running `SimFleet`;
    `fields` (e.g. `max_concurrent_requests`) apply to every one."""
    return [
        ExecutionInstance(
            instance_id=f"sim-{m.index}",
            host=m.host,
            port=m.port,
            model_name=m.config.model_name,
            served_models=list(m.config.served_model_names),
            instance_type=m.config.instance_type,
            **{"scheduling_policy": m.config.scheduling_policy, **fields},
        )
        for m in members
    ]


@asynccontextmanager
async def open_control_plane(
    config: ControlPlaneConfig | dict[str, Any] | str | Path | None = None, **overrides: Any
) -> AsyncIterator[ControlPlaneManager]:
    """A started manager for `config`, with the embedded simulated fleet when it names no
    instances; everything is stopped on exit."""
    cfg = ControlPlaneConfig.load(config)
    manager = cfg.build_manager(**overrides)
    fleet = None
    if cfg.uses_embedded_fleet:
        from sage_cp_plugin.sim import SimFleet

        fleet = SimFleet(cfg.embedded_sim_configs())
        await fleet.start()
        for inst in sim_instances(fleet.members):
            manager.register_instance(inst)
    try:
        await manager.start()
        yield manager
    finally:
        await manager.stop()
        if fleet is not None:
            await fleet.stop()
