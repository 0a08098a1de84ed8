"""The arms of an A/B experiment and which arm a request belongs to.

Assignment is sticky and needs no state: the arm is a pure function of the request's key (the
user id with `sticky_by: user`, falling back to the request id when a request names no user;
the request id with `sticky_by: request`) and of the experiment's name, through a hash mapped
onto the arms' cumulative shares. The same user therefore always lands in the same arm, in
every gateway process, and two experiments with different names split users independently.
A stopped arm has share 0: its users move to the other arms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ARM_TAG = "arm"  # the request tag that carries the arm (metrics, cost, logs)


class ArmConfig(BaseModel):
    """One arm: a router (any registered name) with its options, and a traffic share; in
    split_fleet mode also, optionally, its own scheduling policy (any registered name)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    router: str = Field(min_length=1)
    router_options: dict[str, Any] = Field(default_factory=dict)
    # None: the coordinator's own scheduling policy orders the arm's queue.
    policy: str | None = Field(None, min_length=1)
    policy_options: dict[str, Any] = Field(default_factory=dict)
    share: float = Field(1.0, ge=0)
    # split_fleet: the instance ids this arm owns (no other arm's requests run there).
    instances: list[str] = Field(default_factory=list)


class ExperimentConfig(BaseModel):
    """`routing_strategy: experiment` takes these as its `router_options`."""

    model_config = ConfigDict(extra="forbid")

    # The experiment's name (salts the assignment; on every log line). Not `name`: the
    # plugin registry takes that keyword for the router's own name.
    experiment: str = Field("ab", min_length=1)
    mode: Literal["split_traffic", "split_fleet"] = "split_traffic"
    sticky_by: Literal["user", "request"] = "user"
    arms: list[ArmConfig] = Field(min_length=1)
    # JSONL file of per-request outcomes (what `sage-cp ab report` reads); None = no log.
    log: str | None = None
    log_max_bytes: int = Field(64 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if sum(a.share for a in self.arms) <= 0:
            raise ValueError("at least one arm needs a share > 0")
        if self.mode == "split_fleet":
            owned = [i for a in self.arms for i in a.instances]
            if any(not a.instances for a in self.arms):
                raise ValueError("split_fleet: every arm must list its `instances`")
            if len(set(owned)) != len(owned):
                raise ValueError("split_fleet: an instance belongs to at most one arm")
        elif any(a.instances for a in self.arms):
            raise ValueError("`instances` per arm is for mode split_fleet only")
        elif any(a.policy is not None or a.policy_options for a in self.arms):
            # Arms that share the fleet share one queue: only one order can apply to it.
            raise ValueError(
                "`policy` per arm needs mode split_fleet (arms that split traffic over one "
                "fleet share one queue and its scheduling policy)"
            )
        return self


def _unit(key: str, salt: str) -> float:
    """A uniform number in [0, 1) from `key` (stable across processes and versions)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_arm(key: str, arms: Sequence[ArmConfig], salt: str = "") -> str | None:
    """The arm of `key` by the arms' shares; None when every share is 0."""
    total = sum(a.share for a in arms)
    if total <= 0:
        return None
    u = _unit(key, salt) * total
    acc = 0.0
    for a in arms:
        acc += a.share
        if a.share > 0 and u < acc:
            return a.name
    return next(a.name for a in reversed(arms) if a.share > 0)  # float rounding at the end
