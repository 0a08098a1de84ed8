"""What the dispatcher does next with the head of a pool: a pure decision.

`plan_head(item, fleet, policy, router, now)` looks at one queued request and a read-only
view of the fleet and returns an action; it changes nothing (routers and policies decide in
`select` / `select_instance` without side effects, learning only in their dispatch hooks).
The dispatcher (`dispatch.Dispatcher`) applies the action, which books the request's load
on the chosen instance, and asks again for the next head. So ordering and placement can be
tested by calling this function on hand-built views, without HTTP, tasks or sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.preferences import narrow
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.state import FleetSnapshot, InstanceState


@dataclass(frozen=True, slots=True)
class Launch:
    """Run the request whole on `state`."""

    item: QueuedRequest
    state: InstanceState


@dataclass(frozen=True, slots=True)
class LaunchSplit:
    """Disaggregated prefill: prefill on one instance, decode on another."""

    item: QueuedRequest
    prefill: InstanceState
    decode: InstanceState


@dataclass(frozen=True, slots=True)
class Fail:
    """End the request without running it (`kind`: timeout, no_instance, rejected)."""

    item: QueuedRequest
    reason: str
    kind: str


@dataclass(frozen=True, slots=True)
class Demote:
    """Re-queue the request in the order of work without an objective (the policy found its
    objective can no longer be met); the dispatcher then plans the new head."""

    item: QueuedRequest


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """The head may not run before `when` (retry backoff): come back then."""

    when: float


@dataclass(frozen=True, slots=True)
class WaitForCapacity:
    """No instance can take the head now: the pool waits for a request to finish."""


Action = Launch | LaunchSplit | Fail | Demote | WaitUntil | WaitForCapacity


class FleetView(Protocol):
    """What a plan may read of the fleet (the manager provides it; tests build their own).

    A view may also offer `routable_and_free(item) -> (routable, free)`: both lists from one
    pass, equal to `routable(item)` and its members with `has_room` (the dispatcher does)."""

    @property
    def fleet(self) -> FleetSnapshot: ...

    @property
    def request_timeout_s(self) -> float: ...

    def routable(self, item: QueuedRequest) -> list[InstanceState]:
        """Healthy instances that serve the request (any capacity)."""
        ...

    def has_room(self, state: InstanceState, item: QueuedRequest) -> bool: ...

    def filter_by_phase(
        self, candidates: list[InstanceState], item: QueuedRequest
    ) -> list[InstanceState]: ...

    def no_instance_reason(self, item: QueuedRequest) -> str: ...

    def whole_candidates(
        self, item: QueuedRequest, free: list[InstanceState], routable: list[InstanceState]
    ) -> list[InstanceState]:
        """Disaggregated fleets: where a request that runs whole may go among `free` (asked
        only when `plan_head` has a split decision); empty: it waits for one of `routable`."""
        ...


# (prefill, decode) for a split request, "wait" when a pool it needs is full, None when the
# request is not split. A decision over the fleet view (the dispatcher provides it).
PairChoice = Callable[[QueuedRequest], "tuple[InstanceState, InstanceState] | str | None"]


def timeout_reason(item: QueuedRequest, timeout_s: float) -> str:
    return f"request timed out after {timeout_s:g}s without completing" + (
        f" (last error: {item.last_error})" if item.last_error else ""
    )


def plan_head(
    item: QueuedRequest,
    view: FleetView,
    policy: SchedulingPolicy,
    router: Router,
    now: float,
    split: PairChoice | None = None,
) -> Action:
    """The action for `item`, the head of its pool, at time `now`."""
    if item.not_before > now:
        return WaitUntil(item.not_before)
    if now - item.arrival > view.request_timeout_s:
        return Fail(item, timeout_reason(item, view.request_timeout_s), "timeout")
    if split is not None and not item.pool[1] and not item.no_split:
        pair = split(item)
        if pair == "wait":
            return WaitForCapacity()
        if isinstance(pair, tuple):
            return LaunchSplit(item, pair[0], pair[1])
    # A view may offer both lists from one pass over the fleet (the dispatcher does: it is
    # the per-instance half of a decision's cost); the result is the same.
    both = getattr(view, "routable_and_free", None)
    if both is not None:
        routable, free = both(item)
    else:
        routable = view.routable(item)
        free = [s for s in routable if view.has_room(s, item)]
    if not routable:
        return Fail(item, view.no_instance_reason(item), "no_instance")
    if split is not None and free:
        free = view.whole_candidates(item, free, routable)
        if not free:
            return WaitForCapacity()  # it waits for an instance that meets its objectives
    if item.phase is not None:
        free = [s for s in view.filter_by_phase(free or routable, item) if view.has_room(s, item)]
    if not free:
        if not item.demoted and all(policy.demote(item, s, now, view.fleet) for s in routable):
            # Late wherever it could go: it waits as work without an objective, and stops
            # holding back the requests queued behind it that can still make theirs.
            return Demote(item)
        return WaitForCapacity()
    state = policy.select_instance(item, narrow(item, free), router, view.fleet)
    if state is None:
        return WaitForCapacity()
    reject = policy.check_dispatch(item, state, now)
    if reject is not None:
        return Fail(item, reject, "rejected")
    if not item.demoted and policy.demote(item, state, now, view.fleet):
        return Demote(item)
    return Launch(item, state)
