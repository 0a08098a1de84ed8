"""The simulated fleet a replay runs against: N copies of a preset, or a `fleet.yaml`.

A fleet file lists groups of identical simulated instances; any `SimInstanceConfig` field
(`preset`, `num_kv_blocks`, `max_num_seqs`, `role`, ...) may be set per group::

    instances:
      - count: 8
        preset: llama-3.1-8b-h100-tp1
        num_kv_blocks: 8192
        max_concurrent_requests: 64    # the coordinator's admission cap per instance
        price_per_gpu_hour: 2.5        # optional prices (ExecutionInstance fields): cost
        # price_per_1k_tokens: 0.2     # and what-if reports use them
    name: big-h100                     # optional: how what-if reports call this fleet
    pd: {disaggregation_trigger: predicted}  # optional: PDSeparationConfig of a PD fleet

Groups with `role: prefill` / `role: decode` form PD pools; a fleet file with such groups runs
with PD separation on (`pd:` overrides its settings). Every variant of a comparison gets a
fresh fleet built from the same members (same seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.types import PDSeparationConfig
from sage_cp_plugin.virtual.fleet import MemberSpec

DEFAULT_MAX_CONCURRENT = 64
# Fields of a group that describe the instance to the coordinator (ExecutionInstance), not
# the simulated engine.
PRICE_FIELDS = ("price_per_gpu_hour", "price_per_1k_tokens", "prices_by_tier")


class FleetGroup(BaseModel):
    """`count` identical instances; the remaining keys are `SimInstanceConfig` fields."""

    model_config = ConfigDict(extra="allow")

    count: int = Field(1, ge=1)
    max_concurrent_requests: int = Field(DEFAULT_MAX_CONCURRENT, ge=1)
    price_per_gpu_hour: float | None = Field(None, ge=0)
    price_per_1k_tokens: float | None = Field(None, ge=0)
    prices_by_tier: dict[str, float] = Field(default_factory=dict)


class FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1)
    instances: list[FleetGroup] = Field(min_length=1)
    pd: dict[str, Any] | None = None  # PDSeparationConfig fields


def _prices(group: FleetGroup) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if group.price_per_gpu_hour is not None:
        out["price_per_gpu_hour"] = group.price_per_gpu_hour
    if group.price_per_1k_tokens is not None:
        out["price_per_1k_tokens"] = group.price_per_1k_tokens
    if group.prices_by_tier:
        out["prices_by_tier"] = dict(group.prices_by_tier)
    return out


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
            out.append(
                MemberSpec(
                    cfg,
                    max_concurrent_requests=group.max_concurrent_requests,
                    extra=_prices(group),
                )
            )
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
    spec = read_fleet_file(path)
    try:
        return _members(spec.instances, seed)
    except ConfigurationError as exc:
        raise ConfigurationError(f"fleet file {str(path)!r}: {exc}") from None


def read_fleet_file(path: str | Path) -> FleetFile:
    """The validated contents of a fleet file (clear errors naming the file and field)."""
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
    return spec


def pd_config(spec: FleetFile) -> PDSeparationConfig | None:
    """PD settings of a fleet with prefill/decode pools (None for a general fleet): vLLM's
    two-step protocol, split per request when it pays (`predicted`), unless `pd:` says
    otherwise."""
    roles = {str((g.model_extra or {}).get("role", "general")) for g in spec.instances}
    if spec.pd is None and not roles & {"prefill", "decode"}:
        return None
    fields: dict[str, Any] = {
        "routing_policy": "none",
        "disaggregated": True,
        "disaggregation_trigger": "predicted",
    }
    fields.update(spec.pd or {})
    try:
        return PDSeparationConfig(**fields)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigurationError(f"fleet: pd: {e['msg']}") from None


def context_tokens(members: list[MemberSpec]) -> int:
    """The longest prompt + output every member accepts."""
    return min(m.config.model_len for m in members)
