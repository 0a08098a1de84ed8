"""Each scheduling policy orders one deterministic workload differently, for its own reason."""

from __future__ import annotations

import pytest

from sage_cp_plugin.errors import RequestRejectedError
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.policies import (
    AdaptivePolicy,
    CostOptimizedPolicy,
    FIFOPolicy,
    PriorityPolicy,
    SLOAwarePolicy,
)
from sage_cp_plugin.routing import LoadBalancedRouter
from sage_cp_plugin.types import RequestPriority
from tests.helpers import fleet, item, order, state


def workload() -> list[QueuedRequest]:
    """Five requests, arriving 100 ms apart, with mixed priorities and deadlines."""
    return [
        item(1, now=0.0, priority=RequestPriority.LOW),
        item(2, now=0.1, priority=RequestPriority.CRITICAL, slo_deadline_ms=10_000),
        item(3, now=0.2, priority=RequestPriority.NORMAL, slo_deadline_ms=500),
        item(4, now=0.3, priority=RequestPriority.HIGH),
        item(5, now=0.4, priority=RequestPriority.BACKGROUND, slo_deadline_ms=200),
    ]


def test_policies_release_the_same_workload_in_distinct_orders() -> None:
    orders = {
        "fifo": order(FIFOPolicy(), workload()),
        "priority": order(PriorityPolicy(), workload()),
        "slo_aware": order(SLOAwarePolicy(), workload()),
    }
    assert orders["fifo"] == ["r1", "r2", "r3", "r4", "r5"]
    assert orders["priority"] == ["r2", "r4", "r3", "r1", "r5"]
    # Least slack first: r5 must finish by 0.6 s, r3 by 0.7 s, r2 by 10.1 s; requests
    # without deadlines come after (keyed arrival + 30 s).
    assert orders["slo_aware"] == ["r5", "r3", "r2", "r1", "r4"]
    assert len({tuple(o) for o in orders.values()}) == 3


def test_priority_aging_prevents_starvation() -> None:
    old_low = item(1, now=0.0, priority=RequestPriority.LOW)
    fresh_high = [item(i, now=3.0 + i * 0.01, priority=RequestPriority.HIGH) for i in range(2, 6)]
    # Aging 1 s per class: after 3 s the LOW request (key 0 + 3) beats new HIGH ones (3 + 1).
    assert order(PriorityPolicy(aging_s=1.0), [old_low, *fresh_high])[0] == "r1"
    # Strict priority: it waits behind every HIGH request.
    old_low2 = item(1, now=0.0, priority=RequestPriority.LOW)
    fresh_high2 = [item(i, now=3.0 + i * 0.01, priority=RequestPriority.HIGH) for i in range(2, 6)]
    assert order(PriorityPolicy(aging_s=None), [old_low2, *fresh_high2])[-1] == "r1"


def test_priority_rejects_bad_aging() -> None:
    with pytest.raises(ValueError, match="aging_s"):
        PriorityPolicy(aging_s=-1)


def test_slo_aware_uses_online_speed_and_rejects_hopeless_requests() -> None:
    slow = state("slow")
    # Learnt: 10 ms per prompt token, 100 ms per output token.
    slow.prefill_s_per_token.add(0.01)
    slow.decode_s_per_token.add(0.1)
    it = item(1, now=0.0, slo_deadline_ms=500, max_tokens=50)
    assert slow.predicted_service_s(it.input_tokens, it.output_tokens) > 5.0
    reject = SLOAwarePolicy(late_action="reject").check_dispatch(it, slow, now=0.0)
    assert reject is not None and "deadline cannot be met" in reject and "slow" in reject
    assert SLOAwarePolicy(late_action="run").check_dispatch(it, slow, now=0.0) is None
    fast = state("fast")
    fast.prefill_s_per_token.add(1e-5)
    fast.decode_s_per_token.add(1e-3)
    assert SLOAwarePolicy(late_action="reject").check_dispatch(it, fast, now=0.0) is None
    with pytest.raises(ValueError, match="late_action"):
        SLOAwarePolicy(late_action="maybe")  # type: ignore[arg-type]


def test_slo_aware_orders_by_slack_not_deadline() -> None:
    """Same deadline, longer predicted service -> less slack -> runs first."""
    short = item(1, now=0.0, slo_deadline_ms=1000, max_tokens=1)
    long = item(2, now=0.0, slo_deadline_ms=1000, max_tokens=500)
    short.predicted_s, long.predicted_s = 0.01, 0.8
    assert order(SLOAwarePolicy(), [short, long]) == ["r2", "r1"]


def test_slo_aware_runs_short_requests_without_objective_first_within_a_burst() -> None:
    """No objective: ordered by ideal finish (arrival + predicted service). In one burst the
    shorter request goes first (least slack would run the longest first, raising the mean
    latency); arrivals further apart than their service difference keep arrival order."""
    long = item(1, now=0.000, priority=RequestPriority.LOW)
    short = item(2, now=0.001, priority=RequestPriority.LOW)
    long.predicted_s, short.predicted_s = 0.300, 0.020
    assert order(SLOAwarePolicy(), [long, short]) == ["r2", "r1"]
    early_long = item(1, now=0.0, priority=RequestPriority.LOW)
    late_short = item(2, now=1.0, priority=RequestPriority.LOW)
    early_long.predicted_s, late_short.predicted_s = 0.300, 0.020
    assert order(SLOAwarePolicy(), [early_long, late_short]) == ["r1", "r2"]
    # A request with a TTFT objective still runs before both.
    urgent = item(3, now=0.5, priority=RequestPriority.HIGH, ttft_slo_ms=200)
    urgent.predicted_s = 0.5
    assert order(SLOAwarePolicy(), [long, short, urgent])[0] == "r3"


def _priced_fleet() -> tuple[object, ...]:
    cheap = state("cheap", price_per_1k_tokens=0.1, speed_hint=0.05)
    pricey = state("pricey", price_per_1k_tokens=1.0, speed_hint=5.0)
    return cheap, pricey


def test_cost_optimized_picks_cheapest_that_meets_slo() -> None:
    cheap, pricey = _priced_fleet()
    f = fleet(cheap, pricey)  # type: ignore[arg-type]
    pol, router = CostOptimizedPolicy(), LoadBalancedRouter()
    relaxed = item(1, max_tokens=10)
    assert pol.select_instance(relaxed, [cheap, pricey], router, f) is cheap  # type: ignore[list-item]
    # The cheap instance is 100x slower: it cannot meet a 1 s deadline for 10 tokens.
    urgent = item(2, max_tokens=10, slo_deadline_ms=1000)
    assert pol.select_instance(urgent, [cheap, pricey], router, f) is pricey  # type: ignore[list-item]
    # A budget below the cheap price is rejected with the cheapest achievable price.
    broke = item(3, max_tokens=10, cost_budget=1e-9)
    with pytest.raises(RequestRejectedError, match=r"cheapest achievable price .* 'cheap'"):
        pol.admit(broke, f)
    # A budget only the cheap instance meets keeps the request off the pricey one.
    tight = item(4, max_tokens=100, cost_budget=0.05)
    pol.admit(tight, f)
    assert pol.select_instance(tight, [pricey], router, f) is None  # type: ignore[list-item]


def test_cost_optimized_waits_for_busy_cheap_instance_without_deadline() -> None:
    cheap, pricey = _priced_fleet()
    cheap.in_flight = cheap.capacity  # type: ignore[attr-defined]
    f = fleet(cheap, pricey)  # type: ignore[arg-type]
    assert CostOptimizedPolicy().select_instance(item(1), [pricey], LoadBalancedRouter(), f) is None  # type: ignore[list-item]


def test_adaptive_switches_with_reason_and_rekeys() -> None:
    pol = AdaptivePolicy(evaluate_interval_s=0.0)
    busy = fleet(state("a", in_flight=10, cap=10))
    assert pol.active.name == "fifo"
    deadline_item = item(1, slo_deadline_ms=100)
    pol.admit(deadline_item, busy)
    pol.tick(busy, queue_depth=1, now=1.0)
    assert pol.active.name == "slo_aware"
    assert pol.switches[-1].new == "slo_aware" and "deadline" in pol.switches[-1].reason
    version = pol.version
    pol.on_dequeue(deadline_item)
    pol.admit(item(2, priority=RequestPriority.HIGH), busy)
    pol.admit(item(3, priority=RequestPriority.LOW), busy)
    pol.tick(busy, queue_depth=2, now=2.0)
    assert pol.active.name == "priority" and pol.version > version
    idle = fleet(state("a", cap=10, price_per_gpu_hour=2.0))
    for r in (2, 3):
        pol.on_dequeue(item(r, priority=RequestPriority.HIGH if r == 2 else RequestPriority.LOW))
    pol.tick(idle, queue_depth=0, now=3.0)
    assert pol.active.name == "cost_optimized"
    assert "light load" in pol.switches[-1].reason
    assert [s.new for s in pol.switches] == ["slo_aware", "priority", "cost_optimized"]


def test_adaptive_reacts_to_slo_misses() -> None:
    pol = AdaptivePolicy(evaluate_interval_s=0.0)
    s = state("a")
    for _ in range(20):
        pol.observe(item(1), s, slo_met=False)
    pol.tick(fleet(s), queue_depth=0, now=1.0)
    assert pol.active.name == "slo_aware" and "attainment" in pol.switches[-1].reason
