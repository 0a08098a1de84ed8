"""The simulated fleet a replay runs against: N copies of a preset, or a `fleet.yaml`.

A fleet file lists groups of identical simulated instances; any `SimInstanceConfig` field
(`preset`, `num_kv_blocks`, `max_num_seqs`, `role`, ...) may be set per group::

    instances:
      - count: 8
        preset: llama-3.1-8b-h100-tp1
        num_kv_blocks: 8192
        max_concurrent_requests: 64    # the coordinator's admission cap per instance

Every variant of a comparison gets a fresh fleet built from the same members (same seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.fleet import MemberSpec

DEFAULT_MAX_CONCURRENT = 64


class FleetGroup(BaseModel):
    """`count` identical instances; the remaining keys are `SimInstanceConfig` fields."""

    model_config = ConfigDict(extra="allow")

    count: int = Field(1, ge=1)
    max_concurrent_requests: int = Field(DEFAULT_MAX_CONCURRENT, ge=1)


class FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[FleetGroup] = Field(min_length=1)


def _members(groups: list[FleetGroup], seed: int) -> list[MemberSpec]:
    out: list[MemberSpec] = []
    for g, group in enumerate(groups):
        fields: dict[str, Any] = dict(group.model_extra or {})
        for _ in range(group.count):
            try:
                cfg = SimInstanceConfig(**{**fields, "seed": seed * 1000 + len(out)})
            except ValidationError as exc:
                e = exc.errors()[0]
                where = ".".join(str(p) for p in e["loc"]) or "<group>"
                raise ConfigurationError(
                    f"fleet: instances[{g}].{where}: {e['msg']} (got {e.get('input')!r:.60})"
                ) from None
            out.append(MemberSpec(cfg, max_concurrent_requests=group.max_concurrent_requests))
    return out


def preset_fleet(
    instances: int,
    preset: str,
    *,
    seed: int = 0,
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT,
    **fields: Any,
) -> list[MemberSpec]:
    """`instances` copies of one engine preset (extra `SimInstanceConfig` fields allowed)."""
    if instances < 1:
        raise ConfigurationError(f"--instances must be at least 1, got {instances}")
    group = FleetGroup(
        count=instances,
        max_concurrent_requests=max_concurrent_requests,
        preset=preset,
        **fields,
    )
    return _members([group], seed)


def load_fleet(path: str | Path, *, seed: int = 0) -> list[MemberSpec]:
    """The members a fleet file describes (instance seeds derived from `seed`)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read fleet file {str(p)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"fleet file {str(p)!r} is not valid YAML: {exc}") from None
    try:
        spec = FleetFile.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e["loc"]) or "<root>"
        raise ConfigurationError(f"fleet file {str(p)!r}: {where}: {e['msg']}") from None
    try:
        return _members(spec.instances, seed)
    except ConfigurationError as exc:
        raise ConfigurationError(f"fleet file {str(p)!r}: {exc}") from None


def context_tokens(members: list[MemberSpec]) -> int:
    """The longest prompt + output every member accepts."""
    return min(m.config.model_len for m in members)
