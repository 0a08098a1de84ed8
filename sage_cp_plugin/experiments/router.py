"""`experiment`: the router of an A/B experiment. It delegates each request to the router of
the request's arm (its `arm` tag, set by `Experiment.assign` at the gateway or by the caller).

- `split_traffic`: every arm routes over the whole fleet (placement strategies compared on one
  fleet, one queue, one scheduling policy).
- `split_fleet`: each arm routes only over the instances it owns, and its requests wait in
  the arm's own lane of the queue (`lane_of`), so a busy arm never holds another arm's
  requests back; an arm may name its own scheduling policy (`lane_policy`) to order its
  lane, which is how ordering policies are compared live.
A request without an arm tag (from the Python API, or an offline replay) is routed by its
sticky assignment, the same function the gateway tags with; when every arm is stopped, by the
first arm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.experiments.arms import ARM_TAG, ArmConfig, ExperimentConfig, assign_arm
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import RequestMetadata


def _config(options: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(options)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "<options>"
        raise ConfigurationError(f"experiment router_options: {where}: {e['msg']}") from None


class ExperimentRouter(Router):
    name = "experiment"

    def __init__(self, **options: Any) -> None:
        self.config = _config(options)
        self.routers: dict[str, Router] = {}
        self.policies: dict[str, SchedulingPolicy] = {}  # arms with a policy of their own
        self._owned: dict[str, frozenset[str]] = {}
        for arm in self.config.arms:
            self._install(arm)

    # -- arms ------------------------------------------------------------------------------
    def _install(self, arm: ArmConfig) -> None:
        from sage_cp_plugin.plugins.registry import get_registry

        if arm.router == self.name:
            raise ConfigurationError("an arm's router cannot be another experiment")
        registry = get_registry()
        self.routers[arm.name] = registry.create("router", arm.router, **arm.router_options)
        self._install_policy(arm)
        self._owned[arm.name] = frozenset(arm.instances)

    def _install_policy(self, arm: ArmConfig) -> None:
        from sage_cp_plugin.plugins.registry import get_registry

        if arm.policy is None:
            self.policies.pop(arm.name, None)
        else:
            self.policies[arm.name] = get_registry().create(
                "policy", arm.policy, **arm.policy_options
            )

    def arm(self, name: str) -> ArmConfig:
        for a in self.config.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm {name!r}; arms: {[a.name for a in self.config.arms]}")

    def update_arm(self, name: str, **fields: Any) -> ArmConfig:
        """Change an arm's share, router, policy or options (validated; the old arm stays on
        error)."""
        old = self.arm(name)
        try:
            new = ArmConfig.model_validate({**old.model_dump(), **fields, "name": name})
            arms = [new if a.name == name else a for a in self.config.arms]
            config = ExperimentConfig.model_validate({**self.config.model_dump(), "arms": arms})
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e["loc"]) or "<arm>"
            raise ConfigurationError(f"arm {name!r}: {where}: {e['msg']}") from None
        if (new.router, new.router_options) != (old.router, old.router_options):
            self._install(new)
        elif (new.policy, new.policy_options) != (old.policy, old.policy_options):
            self._install_policy(new)
        self._owned[name] = frozenset(new.instances)
        self.config = config
        return new

    def stop_arm(self, name: str) -> ArmConfig:
        """No new request goes to the arm (share 0); requests in flight finish there."""
        return self.update_arm(name, share=0.0)

    def assign(self, request: RequestMetadata) -> str | None:
        """The arm of a request (sticky: see arms.py)."""
        key = request.request_id
        if self.config.sticky_by == "user" and request.user_id:
            key = request.user_id
        return assign_arm(key, self.config.arms, salt=self.config.experiment)

    def tagged(self, request: RequestMetadata) -> RequestMetadata:
        """`request` with its arm tag (unchanged when it already has one or all arms stopped)."""
        if ARM_TAG in request.tags:
            return request
        arm = self.assign(request)
        if arm is None:
            return request
        return request.model_copy(update={"tags": {**request.tags, ARM_TAG: arm}})

    def _arm_of(self, item: QueuedRequest) -> str:
        return self._arm_for(item.request)

    def _arm_for(self, request: RequestMetadata) -> str:
        arm = request.tags.get(ARM_TAG)
        if isinstance(arm, str) and arm in self.routers:
            return arm
        return self.assign(request) or self.config.arms[0].name

    # -- lanes (split_fleet) ---------------------------------------------------------------
    def lane_of(self, request: RequestMetadata) -> str | None:
        return self._arm_for(request) if self.config.mode == "split_fleet" else None

    def lane_policies(self) -> Mapping[str, SchedulingPolicy]:
        return self.policies

    # -- Router ----------------------------------------------------------------------------
    def select(
        self, item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
    ) -> InstanceState | None:
        arm = self._arm_of(item)
        if self.config.mode == "split_fleet":
            owned = self._owned[arm]
            candidates = [s for s in candidates if s.instance_id in owned]
            if not candidates:
                return None  # the arm's instances are busy: wait for one of them
        return self.routers[arm].select(item, candidates, fleet)

    def on_dispatch(self, item: QueuedRequest, state: InstanceState) -> None:
        self.routers[self._arm_of(item)].on_dispatch(item, state)

    def on_finish(self, item: QueuedRequest, state: InstanceState, ok: bool) -> None:
        self.routers[self._arm_of(item)].on_finish(item, state, ok)

    def on_instance_removed(self, instance_id: str) -> None:
        for r in self.routers.values():
            r.on_instance_removed(instance_id)

    def describe(self) -> dict[str, Any]:
        return {
            "experiment": self.config.experiment,
            "mode": self.config.mode,
            "sticky_by": self.config.sticky_by,
            "arms": [a.model_dump() for a in self.config.arms],
            "log": self.config.log,
        }
