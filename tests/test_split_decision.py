"""The per-request PD decision: split only when the two-step path beats serving it whole."""

from __future__ import annotations

import dataclasses

import pytest

from sage_cp_plugin.split_decision import DivertView, SplitView, diverts, split_pays
from sage_cp_plugin.types import PDSeparationConfig

STEP = 0.02
# A 2000-token uncached prompt at 17 us/token takes 34 ms to prefill: more than a step.
PAYS = SplitView(
    uncached_tokens=2000,
    prefill_s_per_token=17e-6,
    transfer_s_per_token=2e-6,
    prefill_wait_s=0.0,
    whole_wait_s=0.0,
    decode_step_s=STEP,
    decode_in_flight=10,
    decode_limit=64,
    tpot_slo_s=0.1,
)


def test_long_uncached_prompt_with_an_idle_prefill_pool_is_split() -> None:
    assert split_pays(PAYS)


def test_short_prompt_runs_whole() -> None:
    # 500 tokens = 8.5 ms of prefill: less than one decode step.
    assert not split_pays(dataclasses.replace(PAYS, uncached_tokens=500))


def test_busy_prefill_pool_means_whole() -> None:
    # 4 steps of prefill queue against an instance that can start it now: whole wins.
    assert not split_pays(dataclasses.replace(PAYS, prefill_wait_s=4 * STEP))
    # ... unless every whole instance is at least as backed up.
    assert split_pays(dataclasses.replace(PAYS, prefill_wait_s=4 * STEP, whole_wait_s=4 * STEP))


def test_transfer_cost_counts_against_the_split() -> None:
    slow_link = dataclasses.replace(PAYS, transfer_s_per_token=30e-6)  # 60 ms for 2000 tokens
    assert not split_pays(slow_link)


def test_no_decode_slack_means_whole() -> None:
    assert not split_pays(dataclasses.replace(PAYS, decode_in_flight=64))
    assert not split_pays(dataclasses.replace(PAYS, decode_step_s=0.15))  # misses TPOT 100 ms
    # Without a TPOT objective a slow decode step alone does not forbid it.
    assert split_pays(
        dataclasses.replace(PAYS, decode_step_s=0.03, tpot_slo_s=None, uncached_tokens=4000)
    )


def test_predicted_is_a_known_trigger_and_unknown_ones_are_named() -> None:
    assert PDSeparationConfig(disaggregation_trigger="predicted").disaggregation_trigger == (
        "predicted"
    )
    with pytest.raises(ValueError, match="disaggregation_trigger='sometimes'"):
        PDSeparationConfig(disaggregation_trigger="sometimes")


def test_whole_requests_keep_off_decode_instances_they_would_stall() -> None:
    """A request running whole skips a decode instance whose decodes its prefill would cost
    a step, while a non-decode instance has room; with none, it may go anywhere."""
    from sage_cp_plugin.split_decision import hurts_decodes, whole_targets

    # 2,000 tokens at 20 us/token = 40 ms: longer than a 20 ms decode step.
    assert hurts_decodes(2000, 2e-5, 0.020)
    assert not hurts_decodes(500, 2e-5, 0.020)  # 10 ms: fits in a step's slack
    free = ["p0", "d0", "d1"]
    is_decode = lambda s: s.startswith("d")  # noqa: E731
    assert whole_targets(free, is_decode, lambda s: True) == ["p0"]
    assert whole_targets(free, is_decode, lambda s: s == "d0") == ["p0", "d1"]
    # Only decode instances have room: the request is not held back (general-pool goodput).
    assert whole_targets(["d0", "d1"], is_decode, lambda s: True) == ["d0", "d1"]


def test_whole_request_goes_to_a_decode_instance_when_no_other_serves_it() -> None:
    """The non-decode instance with room must serve the request (`serves`); when none does,
    the decode instances are open to it (goodput first)."""
    from sage_cp_plugin.split_decision import whole_targets

    free = ["p0", "d0"]
    is_decode = lambda s: s.startswith("d")  # noqa: E731
    assert whole_targets(free, is_decode, lambda s: True, lambda s: True) == ["p0"]
    assert whole_targets(free, is_decode, lambda s: True, lambda s: False) == ["p0", "d0"]


# A 2,000-token prompt (40 ms of prefill) next to 10 sequences decoding on the best decode
# instance: 0.4 s of stall in all.
DIVERT = DivertView(
    ttft_s=0.05,
    step_s=0.02,
    decode_ttft_s=0.04,
    decode_stall_s=10 * 0.04,
    ttft_left_s=1.0,
    tpot_slo_s=0.1,
)


def test_divert_when_the_extra_wait_is_less_than_the_stall_it_spares_the_decodes() -> None:
    assert diverts(DIVERT)
    assert diverts(dataclasses.replace(DIVERT, ttft_s=0.44))
    # Behind more prefill than the stall it would cause, even with 1 s of TTFT objective
    # left (a burst would eat that slack): it goes to the decode instance.
    assert not diverts(dataclasses.replace(DIVERT, ttft_s=0.5))
    # A decode instance with nothing decoding is like any other: no extra wait for it.
    idle = dataclasses.replace(DIVERT, decode_stall_s=0.0)
    assert not diverts(idle)
    assert diverts(dataclasses.replace(idle, ttft_s=0.04))


def test_divert_never_costs_the_request_an_objective() -> None:
    assert not diverts(dataclasses.replace(DIVERT, ttft_left_s=0.03))  # TTFT would miss
    assert not diverts(dataclasses.replace(DIVERT, step_s=0.12))  # TPOT 100 ms would miss
    # Objectives it does not have cannot be missed.
    free = dataclasses.replace(DIVERT, step_s=0.12, ttft_left_s=None, tpot_slo_s=None)
    assert diverts(free)


def test_a_long_prompt_next_to_many_decodes_waits_for_the_prefill_pool() -> None:
    """Condition 3 counts the stall the prompt's prefill puts on the sequences decoding where
    it is prefilled: 34 ms of prefill next to 30 decodes costs them 1 s in all, more than
    the 80 ms the request waits for a prefill instance with nothing decoding."""
    busy = dataclasses.replace(PAYS, prefill_wait_s=4 * STEP)
    assert not split_pays(busy)  # the request's own wait alone says whole
    assert split_pays(dataclasses.replace(busy, whole_stall_s=30 * 0.034))
    # ... and not when the prefill instance has as many decodes to stall.
    assert not split_pays(
        dataclasses.replace(busy, whole_stall_s=30 * 0.034, prefill_stall_s=30 * 0.034)
    )


def test_the_split_never_costs_the_ttft_objective_that_running_whole_meets() -> None:
    slow = dataclasses.replace(
        PAYS, prefill_wait_s=0.9, prefill_s=0.04, whole_stall_s=60.0, ttft_left_s=0.5
    )
    assert not split_pays(dataclasses.replace(slow, whole_ttft_s=0.05))
    # When running whole misses it too, the cheaper path for the fleet is taken.
    assert split_pays(dataclasses.replace(slow, whole_ttft_s=2.0))


def test_lateness_is_the_worst_objective_ratio() -> None:
    from sage_cp_plugin.split_decision import lateness

    assert lateness(0.5, 0.05, 1.0, 0.1) == 0.5  # both met: the closer one
    assert lateness(0.5, 0.15, 1.0, 0.1) == pytest.approx(1.5)  # TPOT 1.5x its objective
    assert lateness(2.0, 0.15, None, None) == 0.0  # no objectives, nothing to miss
    assert lateness(0.1, 0.01, 0.0, 0.1) == float("inf")  # its TTFT objective is spent


def test_a_whole_request_waits_for_the_instance_whose_gate_opens_rather_than_miss() -> None:
    """A request that runs whole goes only where the load model predicts it meets its
    objectives. When the only instance with room is a prefill instance behind seconds of
    prefill (its decode steps a full chunk each) and a decode instance held back by its
    prefill gate would meet them, it waits (no target); when nothing would meet them, the
    instance predicted to miss by the least."""
    from sage_cp_plugin.split_decision import whole_targets

    is_decode = lambda s: s.startswith("d")  # noqa: E731
    hurts = lambda s: False  # noqa: E731
    late = {"p0": 1.5, "d0": 0.4, "d1": 2.0}
    # Before this rule the request took p0, the only instance with room.
    assert whole_targets(["p0"], is_decode, hurts, late=late.get, held=["d0"]) == []
    # Nothing held, or the held one no better: it runs where it has room.
    assert whole_targets(["p0"], is_decode, hurts, late=late.get) == ["p0"]
    assert whole_targets(["p0"], is_decode, hurts, late=late.get, held=["d1"]) == ["p0"]
    # Among instances with room, only those that meet its objectives.
    assert whole_targets(["p0", "d0"], is_decode, hurts, late=late.get) == ["d0"]


def test_an_idle_prefill_instance_takes_a_short_whole_request_within_its_objectives() -> None:
    """A prefill instance whose learnt step (113 ms) was measured beside full chunks of
    split prompts, idle now, and a decode instance held back by its prefill gate: a short
    request meets its TPOT objective on the idle instance (it decodes at a decode step
    there, as measured on the decode instance, until prompts queue again) and goes there.
    Before, the 113 ms step predicted a miss of the 100 ms objective and the request waited
    in the queue for the decode instance while the prefill instance stood idle."""
    from sage_cp_plugin import load_model as lm
    from sage_cp_plugin.concurrency_limit import ConcurrencyLimits
    from sage_cp_plugin.disaggregation import Disaggregator
    from sage_cp_plugin.pools import InstancePools
    from sage_cp_plugin.whole_placement import whole_candidates

    from .helpers import fleet, item, state

    p = state("p", cap=64, instance_type="prefilling")
    p.decode_s_per_token.add(0.113)
    p.prefill_s_per_token.add(5e-6)
    d = state("d", cap=64, instance_type="decoding")
    d.decode_s_per_token.add(0.007)
    d.prefill_s_per_token.add(17e-6)
    lm.book(d, 4000, 10, 0, now=0.0)  # ~70 ms of prefill queued: its gate holds it
    pools = InstancePools(fleet(p, d), limits=ConcurrencyLimits())
    it = item(1, prompt="x" * 1200, ttft_slo_ms=1000, tpot_slo_ms=100)
    assert pools.has_room(p, it) and not pools.has_room(d, it)
    assert pools.opens_as_prefill_drains(d, it)
    dis = Disaggregator(
        PDSeparationConfig(
            routing_policy="none", disaggregated=True, disaggregation_trigger="predicted"
        )
    )
    assert whole_candidates(it, [p], [p, d], pools, dis, 0.0) == [p]
