"""The TTFT reserve: while requests with a TTFT objective arrive, work without one is sent to
an instance only while a request with that objective would still get its first token in time
there; requests with the objective are not held back on the engines' prefill queue."""

from __future__ import annotations

import pytest

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin import load_model as lm
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.ttft_reserve import TTFTReserve, keeps_due
from sage_cp_plugin.types import RequestPriority
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.workloads.format import WorkloadRecord

from .helpers import item, state

RATE = 2e-5  # seconds per prefill token
STEP = 0.03  # decode step, seconds


def _instance(**fields: object) -> InstanceState:
    s = state("a", cap=64, **fields)
    s.prefill_s_per_token.add(RATE)
    s.decode_s_per_token.add(STEP)
    return s


def test_batch_fits_only_while_an_objective_would_still_be_met() -> None:
    r = TTFTReserve()
    s = _instance()
    lm.book(s, 3000, 10, 0, now=0.0)  # one prompt queued: ~0.09 s of prefill
    assert r.batch_fits(s, 4000, 0.0)  # no objective seen: no reserve
    r.note(0.2, 2000, now=0.0)
    # 3000 queued + 4000 batch + 2000 of the objective's prompt: 0.18 s + one step each chunk
    # of 8192 tokens = 0.24 s > 0.2 s: the batch request waits.
    assert lm.prefill_time_s(s, 9000) > 0.2
    assert not r.batch_fits(s, 4000, 0.0)
    assert r.batch_fits(s, 1000, 0.0)  # a short one leaves room: 6000 tokens, 0.18 s
    # The tightest objective seen binds.
    r.note(0.5, 2000, now=0.01)
    assert not r.batch_fits(s, 4000, 0.01)


def test_an_instance_with_nothing_queued_always_takes_batch_work() -> None:
    r = TTFTReserve()
    r.note(0.05, 4000, now=0.0)
    s = _instance()
    assert r.batch_fits(s, 16000, 0.0)  # else a prompt longer than the room never runs


def test_the_reserve_lifts_when_the_objective_class_stops_arriving() -> None:
    r = TTFTReserve()
    for k in range(5):
        r.note(0.2, 2000, now=0.1 * k)  # one every 0.1 s, the last at 0.4

    def queued_at(now: float) -> InstanceState:
        s = _instance()
        lm.book(s, 6000, 10, 0, now=now)
        return s

    assert not r.batch_fits(queued_at(0.45), 4000, 0.45)
    late = 0.4 + 11 * 0.1  # more than ten of its gaps without one
    assert r.active(0.4 + 9 * 0.1) and not r.active(late)
    assert r.batch_fits(queued_at(late), 4000, late)
    # A class that comes back starts afresh (its old objective does not linger).
    r.note(1.0, 2000, now=5.0)
    assert r.slo_s == pytest.approx(1.0)


def test_pools_hold_batch_work_but_not_requests_with_a_ttft_objective() -> None:
    m = ControlPlaneManager(scheduling_policy="slo_aware", adaptive_concurrency=True)
    s = _instance(scheduling_policy="priority")
    lm.book(s, 12000, 10, 0, now=0.0)  # far more than two steps of prefill queued
    assert m.limits is not None and m.limits.reserve is not None
    m.limits.reserve.note(0.2, 2000, now=0.0)
    batch = item(1)
    interactive = item(2, ttft_slo_ms=200.0, priority=RequestPriority.HIGH)
    assert not m.pools.has_room(s, batch)
    assert m.pools.has_room(s, interactive)  # the engine's priority order serves it next
    # Off: the step-counted gate holds every request (the coordinator before the reserve).
    off = ControlPlaneManager(
        scheduling_policy="slo_aware", adaptive_concurrency=True, ttft_reserve=False
    )
    assert off.limits is not None and off.limits.reserve is None
    assert not off.pools.has_room(s, batch)
    assert not off.pools.has_room(s, interactive)
    # An engine in arrival order would queue it behind that prefill anyway: held as before.
    fcfs = _instance()
    lm.book(fcfs, 12000, 10, 0, now=0.0)
    assert not m.pools.has_room(fcfs, interactive)


def _mixed_workload() -> list[WorkloadRecord]:
    """Long batch prompts arriving faster than one engine prefills them (about 1.3x), with an
    interactive request (TTFT objective 200 ms, a 2000-token prompt alone takes ~40 ms)
    every 150 ms among them."""
    recs: list[WorkloadRecord] = []
    for k in range(60):
        recs.append(
            WorkloadRecord(
                arrival_s=0.05 * k,
                input_tokens=3500,
                output_tokens=8,
                priority=RequestPriority.LOW,
                slo_class="batch",
            )
        )
    for k in range(20):
        recs.append(
            WorkloadRecord(
                arrival_s=0.025 + 0.15 * k,
                input_tokens=2000,
                output_tokens=8,
                priority=RequestPriority.HIGH,
                ttft_slo_ms=200.0,
                slo_class="interactive",
            )
        )
    return sorted(recs, key=lambda r: r.arrival_s)


def _attainment(reserve: bool) -> tuple[float, float]:
    fleet = InProcessFleet(
        [MemberSpec(SimInstanceConfig(seed=0, scheduling_policy="priority"), 64)]
    )
    cfg = CoordinatorConfig(
        policy="slo_aware", extra={"adaptive_concurrency": True, "ttft_reserve": reserve}
    )
    res = run_replay(_mixed_workload(), fleet, cfg, prompt_seed=0)
    assert all(o.state == "completed" for o in res.outcomes)
    inter = [o for o in res.outcomes if o.slo_class == "interactive"]
    done = max(o.finished_s or 0.0 for o in res.outcomes)
    return sum(bool(o.slo_met) for o in inter) / len(inter), done


def test_interactive_requests_keep_their_ttft_beside_long_batch_prompts() -> None:
    """The engine serves the prefill of running batch prompts before any newly admitted
    request whatever its priority (vLLM's order, the simulator's too): with the reserve,
    batch prompts are released only while an interactive request would still meet its
    objective behind them, and every interactive request does; without it, batch prompts
    pile up in the engine and interactive requests miss. The batch work still all runs,
    ending at about the same time (the engine was never left idle for it)."""
    with_reserve, end_with = _attainment(True)
    without, end_without = _attainment(False)
    assert with_reserve == 1.0
    assert without <= 0.8
    assert end_with <= end_without * 1.05


def test_the_reserve_grows_with_the_objective_work_expected_within_one_objective() -> None:
    """One typical prompt is room enough while requests with an objective arrive slowly; in
    a burst of them, the room kept is what is expected to reach the instance within one
    objective at their measured pace (the fleet's share of it), so batch work waits."""
    s = _instance()
    lm.book(s, 2000, 10, 0, now=0.0)
    slow = TTFTReserve()
    for k in range(5):
        slow.note(0.2, 1000, now=1.0 * k)  # one a second
    assert slow.expected_tokens(instances=2) == pytest.approx(1000)
    assert slow.batch_fits(s, 2000, 4.0, instances=2)
    burst = TTFTReserve()
    for k in range(5):
        burst.note(0.2, 1000, now=0.01 * k)  # one every 10 ms: ten per instance per 0.2 s
    assert burst.expected_tokens(instances=2) == pytest.approx(10_000)
    assert not burst.batch_fits(s, 2000, 0.04, instances=2)


def test_the_reserve_outlasts_pauses_no_longer_than_one_already_seen() -> None:
    """Bursty arrivals pause between bursts for far longer than their gaps inside a burst:
    the reserve stays on through a pause no longer than the longest seen, so a burst does
    not open on engines filled with batch work."""
    r = TTFTReserve()
    r.note(0.2, 1000, now=0.0)
    r.note(0.2, 1000, now=2.0)  # a pause of 2 s
    for k in range(1, 20):
        r.note(0.2, 1000, now=2.0 + 0.001 * k)  # a burst: gaps of 1 ms
    last = 2.019
    assert r.active(last + 1.9)
    assert not r.active(last + 2.1)


def test_work_is_not_sent_where_it_would_make_a_waiting_objective_late() -> None:
    """A request still waiting for its first token on an instance keeps it: a new one (with
    or without an objective) that would push it past its due time goes elsewhere or waits.
    One already late without the newcomer is not protected: its objective is lost anyway."""
    s = _instance()
    lm.book(s, 2000, 10, 0, now=0.0, first_token_due=0.2)  # ~0.07 s of prefill: in time
    assert keeps_due(s, 2000, 0.0)
    assert not keeps_due(s, 7000, 0.0)  # 9000 tokens: 0.18 s + two steps, after 0.2 s
    late = _instance()
    lm.book(late, 2000, 10, 0, now=0.0, first_token_due=0.05)  # late whatever follows
    assert keeps_due(late, 7000, 0.0)
    r = TTFTReserve()
    r.note(0.5, 100, now=0.0)  # a loose objective: the room alone would admit 7000 tokens
    assert not r.batch_fits(s, 7000, 0.0)


def test_a_demoted_request_passes_the_gates_of_work_without_an_objective() -> None:
    """A request whose objective was given up (demoted) is work without one: it no longer
    skips the prefill gates on a priority engine, where it would fill the steps that the
    requests still able to meet theirs need."""
    m = ControlPlaneManager(scheduling_policy="slo_aware", adaptive_concurrency=True)
    s = _instance(scheduling_policy="priority")
    lm.book(s, 12000, 10, 0, now=0.0)
    assert m.limits is not None and m.limits.reserve is not None
    m.limits.reserve.note(0.2, 2000, now=0.0)
    interactive = item(2, ttft_slo_ms=200.0, priority=RequestPriority.HIGH)
    assert m.pools.has_room(s, interactive)
    interactive.demoted = True
    assert not m.pools.has_room(s, interactive)
