"""Dispatch decisions as a pure function: `plan_head` over hand-built views of the queue and
the fleet. Ordering and placement are asserted exactly, without HTTP, tasks or sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field

from sage_cp_plugin import load_model as lm
from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.planning import Fail, Launch, WaitForCapacity, WaitUntil, plan_head
from sage_cp_plugin.policies import FIFOPolicy, PriorityPolicy
from sage_cp_plugin.policies.base import SchedulingPolicy
from sage_cp_plugin.routing import LoadBalancedRouter, RoundRobinRouter
from sage_cp_plugin.routing.base import Router
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import RequestPriority
from tests.helpers import item, state


@dataclass
class View:
    """The smallest FleetView: every state serves every request."""

    states: list[InstanceState]
    request_timeout_s: float = 60.0
    fleet: FleetSnapshot = field(init=False)

    def __post_init__(self) -> None:
        self.fleet = FleetSnapshot({s.instance_id: s for s in self.states})

    def routable(self, item: QueuedRequest) -> list[InstanceState]:
        return [s for s in self.states if s.routable]

    def has_room(self, state: InstanceState, item: QueuedRequest) -> bool:
        return state.has_capacity

    def filter_by_phase(
        self, candidates: list[InstanceState], item: QueuedRequest
    ) -> list[InstanceState]:
        return candidates

    def no_instance_reason(self, item: QueuedRequest) -> str:
        return "no healthy instance"


def drain(
    items: list[QueuedRequest], view: View, policy: SchedulingPolicy, router: Router
) -> list[tuple[str, str]]:
    """Apply plans the way the dispatcher does (book the load, pop) until the queue waits."""
    q = PendingQueue(1000)
    for it in items:
        it.key = policy.key(it)
        q.push(it)
    placed = []
    while (pools := q.pools()) and (head := q.peek(pools[0])) is not None:
        action = plan_head(head, view, policy, router, 0.0)
        if not isinstance(action, Launch):
            break
        q.pop(pools[0])
        action.state.in_flight += 1
        lm.book(action.state, head.input_tokens, head.output_tokens, 0, 0.0)
        router.on_dispatch(head, action.state)
        placed.append((head.request_id, action.state.instance_id))
    return placed


def test_plan_is_pure_and_places_by_predicted_ttft() -> None:
    a, b = state("a"), state("b")
    lm.book(a, 6000, 10, 0, 0.0)  # a long prompt is still prefilling on a
    view = View([a, b])
    it = item(1, prompt="hello " * 50)
    first = plan_head(it, view, FIFOPolicy(), LoadBalancedRouter(), 0.0)
    assert first == plan_head(it, view, FIFOPolicy(), LoadBalancedRouter(), 0.0)
    assert isinstance(first, Launch) and first.state is b


def test_priority_orders_and_load_balanced_places_deterministically() -> None:
    items = [
        item(1, priority=RequestPriority.LOW, prompt="x" * 4000),
        item(2, priority=RequestPriority.HIGH, prompt="y" * 400),
        item(3, priority=RequestPriority.NORMAL, prompt="z" * 400),
        item(4, priority=RequestPriority.CRITICAL, prompt="w" * 400),
    ]
    view = View([state("a", cap=2), state("b", cap=2)])
    placed = drain(items, view, PriorityPolicy(), LoadBalancedRouter())
    # Most urgent first. r2 goes to the empty b; r3 sees a and b equally loaded and takes
    # the first of its rotation (seq 3 of 2 candidates starts at b); the long r1 gets a.
    assert placed == [("r4", "a"), ("r2", "b"), ("r3", "b"), ("r1", "a")]
    # The same inputs give the same plan.
    again = [item(k.seq, priority=k.request.priority, prompt=k.request.prompt) for k in items]
    view2 = View([state("a", cap=2), state("b", cap=2)])
    assert drain(again, view2, PriorityPolicy(), LoadBalancedRouter()) == placed


def test_round_robin_and_a_full_pool_waits() -> None:
    view = View([state("a", cap=1), state("b", cap=1)])
    items = [item(k) for k in range(3)]
    placed = drain(items, view, FIFOPolicy(), RoundRobinRouter())
    assert placed == [("r0", "a"), ("r1", "b")]
    assert isinstance(
        plan_head(items[2], view, FIFOPolicy(), RoundRobinRouter(), 0.0), WaitForCapacity
    )


def test_backoff_timeout_and_no_instance() -> None:
    a = state("a")
    view = View([a], request_timeout_s=10.0)
    waiting = item(1)
    waiting.not_before = 2.0
    assert plan_head(waiting, view, FIFOPolicy(), RoundRobinRouter(), 1.0) == WaitUntil(2.0)
    late = item(2)
    action = plan_head(late, view, FIFOPolicy(), RoundRobinRouter(), 11.0)
    assert isinstance(action, Fail) and action.kind == "timeout"
    a.healthy = False
    action = plan_head(item(3), view, FIFOPolicy(), RoundRobinRouter(), 0.0)
    assert isinstance(action, Fail) and action.kind == "no_instance"


def test_slo_aware_demotes_a_request_whose_prefill_would_start_after_its_ttft_deadline() -> None:
    """A TTFT-SLO request that cannot make it even on the optimistic side of the load model
    is re-queued as work without an objective (so it stops delaying requests that can still
    make theirs); one that can make it launches; a demoted request is never demoted again."""
    from sage_cp_plugin.planning import Demote
    from sage_cp_plugin.policies import SLOAwarePolicy

    busy = state("busy")
    busy.prefill_s_per_token.add(1e-4)  # 10k tokens/s: 20,000 queued tokens wait 2 s
    busy.decode_s_per_token.add(0.02)
    lm.book(busy, 20_000, 10, 0, 0.0)
    view = View([busy])
    policy = SLOAwarePolicy()
    late = item(1, now=0.0, ttft_slo_ms=200, priority=RequestPriority.HIGH)
    late.key = policy.key(late)
    action = plan_head(late, view, policy, LoadBalancedRouter(), 0.0)
    assert action == Demote(late)
    # Demoted: ordered behind a later request without any objective that is shorter.
    late.demoted = True
    batch = item(2, now=0.0, priority=RequestPriority.LOW)
    late.predicted_s, batch.predicted_s = 0.5, 0.1
    assert policy.key(late) > policy.key(batch)
    assert isinstance(plan_head(late, view, policy, LoadBalancedRouter(), 0.0), Launch)
    # With a generous SLO the same request launches; `late_action="run"` never demotes.
    relaxed = item(3, now=0.0, ttft_slo_ms=5000)
    assert isinstance(plan_head(relaxed, view, policy, LoadBalancedRouter(), 0.0), Launch)
    other = item(4, now=0.0, ttft_slo_ms=200)
    run = SLOAwarePolicy(late_action="run")
    assert isinstance(plan_head(other, view, run, LoadBalancedRouter(), 0.0), Launch)


def test_slo_aware_judges_a_ttft_objective_with_the_requests_own_prefill() -> None:
    """A request whose prefill would start in time but whose own prompt would end it after
    its first-token deadline misses it: it is demoted, so the engine's steps go to requests
    behind it that can still make theirs (a long prompt first, in an overload: the order
    that keeps the most objectives, as in Moore-Hodgson)."""
    from sage_cp_plugin.planning import Demote
    from sage_cp_plugin.policies import SLOAwarePolicy

    s = state("s")
    s.prefill_s_per_token.add(2e-5)  # 50k tokens/s
    s.decode_s_per_token.add(0.01)
    lm.book(s, 4000, 10, 0, 0.0)  # ~0.09 s of prefill ahead
    view = View([s])
    policy = SLOAwarePolicy()
    long = item(1, now=0.0, ttft_slo_ms=200, priority=RequestPriority.HIGH)
    long.input_tokens = 6000  # its own prefill: 0.12 s more, 0.21 s + a step in all
    short = item(2, now=0.0, ttft_slo_ms=200, priority=RequestPriority.HIGH)
    short.input_tokens = 500
    for it in (long, short):
        it.key = policy.key(it)
    assert plan_head(long, view, policy, LoadBalancedRouter(), 0.0) == Demote(long)
    assert isinstance(plan_head(short, view, policy, LoadBalancedRouter(), 0.0), Launch)


def test_a_request_late_everywhere_is_demoted_rather_than_wait_for_room() -> None:
    """With no instance free, a request the policy would demote on every instance is demoted
    at once: waiting at the head of the queue for room it could not use in time would only
    hold back the requests queued behind it."""
    from sage_cp_plugin.planning import Demote
    from sage_cp_plugin.policies import SLOAwarePolicy

    full = state("full", in_flight=10, cap=10)
    full.prefill_s_per_token.add(1e-4)
    full.decode_s_per_token.add(0.02)
    lm.book(full, 20_000, 10, 0, 0.0)  # 2 s of prefill queued
    view = View([full])
    policy = SLOAwarePolicy()
    late = item(1, now=0.0, ttft_slo_ms=200, priority=RequestPriority.HIGH)
    late.key = policy.key(late)
    assert plan_head(late, view, policy, LoadBalancedRouter(), 0.0) == Demote(late)
    # One that could still make it waits for room; so does anything under fifo.
    relaxed = item(2, now=0.0, ttft_slo_ms=5000)
    assert isinstance(plan_head(relaxed, view, policy, LoadBalancedRouter(), 0.0), WaitForCapacity)
    assert isinstance(
        plan_head(late, view, FIFOPolicy(), LoadBalancedRouter(), 0.0), WaitForCapacity
    )
