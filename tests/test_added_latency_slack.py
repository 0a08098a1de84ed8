"""Pure-function tests for `lowest_added_latency_within_slack_index`: the added-latency
cost decides only among candidates whose predicted TTFT meets the request's objective."""

from __future__ import annotations

from sage_cp_plugin.routing.added_latency import (
    lowest_added_latency_index,
    lowest_added_latency_within_slack_index,
)
from sage_cp_plugin.routing.predicted import Times, lowest_ttft_index
from tests.helpers import item

# Candidate 0: fast TTFT, heavy cost to running sequences; candidate 1: slower TTFT, no cost.
TIMES = Times(owns=[100, 100], ttfts=[0.2, 0.6], steps=[0.02, 0.02], costs=[1.0, 0.0])


def test_without_ttft_objective_it_is_least_ttft() -> None:
    it = item(1)
    assert (
        lowest_added_latency_within_slack_index(it, TIMES, 0.0) == lowest_ttft_index(it, TIMES) == 0
    )


def test_slack_under_the_objective_lets_added_latency_decide() -> None:
    it = item(1, ttft_slo_ms=1000.0)
    assert lowest_added_latency_index(it, TIMES) == 1
    assert lowest_added_latency_within_slack_index(it, TIMES, 0.0) == 1


def test_a_candidate_over_the_objective_is_not_taken_for_its_low_cost() -> None:
    it = item(1, ttft_slo_ms=400.0)  # candidate 1 (600 ms) would miss the objective
    assert lowest_added_latency_index(it, TIMES) == 1
    assert lowest_added_latency_within_slack_index(it, TIMES, 0.0) == 0


def test_no_candidate_meets_the_objective_falls_back_to_least_ttft() -> None:
    it = item(1, ttft_slo_ms=100.0)
    assert lowest_added_latency_within_slack_index(it, TIMES, 0.0) == 0


def test_time_already_waited_counts_against_the_objective() -> None:
    # Arrived at 0 with 1000 ms; at 0.5 s only 500 ms are left: candidate 1 (600 ms more)
    # would bring the first token 1.1 s after arrival, a miss; candidate 0 (200 ms) meets it.
    it = item(1, now=0.0, ttft_slo_ms=1000.0)
    assert lowest_added_latency_within_slack_index(it, TIMES, 0.0) == 1
    assert lowest_added_latency_within_slack_index(it, TIMES, 0.5) == 0
