"""The TPOT tail's observed/expected correction (``elastic/tail_ratio.py``) and its use by the
autoscaler: pure functions fed scripted counts (no clock, no sleeps)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sage_cp_plugin.elastic.arrivals import poisson_bounds, z_of
from sage_cp_plugin.elastic.autoscaler import (
    AutoscalerConfig,
    Decision,
    LoadSample,
    ScalerState,
    decide,
)
from sage_cp_plugin.elastic.capacity import StepModel
from sage_cp_plugin.elastic.sizing import general_miss
from sage_cp_plugin.elastic.tpot import summarise
from sage_cp_plugin.elastic.ttft import Lengths
from sage_cp_plugin.workloads.traces import load_trace

Z = z_of(0.95)


def test_ratio_is_one_while_the_counts_agree_with_the_model() -> None:
    assert tail_ratio_of(observed=20, expected=20) == 1.0
    assert tail_ratio_of(observed=0, expected=0) == 1.0
    # Two expected, none seen: Poisson noise, no evidence the model is wrong.
    assert tail_ratio_of(observed=0, expected=2) == 1.0


def test_ratio_falls_only_to_the_upper_bound_of_what_was_seen() -> None:
    upper = poisson_bounds(0, 1.0, Z)[1]
    assert tail_ratio_of(observed=0, expected=50) == pytest.approx(upper / 50)
    # More evidence, tighter bound, deeper correction.
    assert tail_ratio_of(observed=0, expected=200) < tail_ratio_of(observed=0, expected=50)
    assert tail_ratio_of(observed=5, expected=50) > tail_ratio_of(observed=0, expected=50)


def test_ratio_rises_to_the_lower_bound_and_no_further_than_the_ceiling() -> None:
    lower = poisson_bounds(60, 1.0, Z)[0]
    assert tail_ratio_of(observed=60, expected=20) == pytest.approx(lower / 20)
    assert tail_ratio_of(observed=600, expected=20) == 3.0
    # Misses where the model expected none: wrong by an unknown factor, the ceiling.
    assert tail_ratio_of(observed=3, expected=0) == 3.0


def test_cells_are_summed_and_bad_ceiling_refused() -> None:
    from sage_cp_plugin.elastic.tail_ratio import tail_ratio

    split = tail_ratio([(0.0, 0.0, 25.0), (30.0, 0.0, 25.0)], Z, 3.0)
    assert split == tail_ratio_of(observed=0, expected=50)
    with pytest.raises(ValueError, match="ceiling"):
        tail_ratio([(0.0, 1.0, 1.0)], Z, 0.0)


def tail_ratio_of(*, observed: float, expected: float) -> float:
    from sage_cp_plugin.elastic.tail_ratio import tail_ratio

    return tail_ratio([(0.0, observed, expected)], Z, 3.0)


# Llama-3.3-70B on 4 H100s (the evaluation's preset) and the bundled Mooncake trace's mix
# (long prompts, many answers of a few tokens): the model predicts a TPOT tail that sizes the
# fleet well beyond what the work alone needs (5 replicas at 1.8 req/s).
H100_70B = StepModel.from_sim(12.6, 76.4, 66.8, 64)
_TRACE = load_trace("mooncake", max_input_tokens=4000)
PROMPTS = summarise([r.input_tokens for r in _TRACE])
OUTPUTS = summarise([r.output_tokens for r in _TRACE])
ISL, OSL = sum(PROMPTS) / len(PROMPTS), sum(OUTPUTS) / len(OUTPUTS)


def run(observed_x: float, intervals: int = 40, rate: float = 1.8) -> list[Decision]:
    """Feed steady samples whose TPOT misses are ``observed_x`` times what the model expects
    for the fleet that served them; every decision applied at once."""
    cfg = AutoscalerConfig(ttft_target_s=3.0, tpot_target_s=0.1, max_replicas=16)
    state, fleet, out, owed = ScalerState(), 8, [], 0.0
    mix = Lengths(ISL, OSL, 0.4, 1.5, PROMPTS, OUTPUTS)
    for i in range(intervals):
        done = round(rate * cfg.interval_s)
        p = general_miss(H100_70B, rate, fleet, mix, ttft_target_s=3.0, tpot_target_s=0.1,
                         work_factor=state.tpot_correction).tpot  # fmt: skip
        s = LoadSample(now=i * cfg.interval_s, arrival_rate=rate, mean_prompt_tokens=ISL,
                       mean_output_tokens=OSL, prompt_cv2=0.4, output_cv2=1.5, completed=done,
                       prompt_lengths=PROMPTS, output_lengths=OUTPUTS,
                       tpot_misses=int(owed := owed + observed_x * p * done),
                       ready={"general": fleet})  # fmt: skip
        owed -= s.tpot_misses  # whole misses only: the fraction carries to the next interval
        d, state = decide(cfg, H100_70B, s, state)
        fleet = d.desired["general"]
        out.append(d)
    return out


def test_a_fleet_missing_far_less_than_predicted_is_cut() -> None:
    right, better = run(1.0), run(0.0)
    assert right[-1].tpot_tail_ratio == 1.0
    assert better[-1].tpot_tail_ratio < 0.5
    assert better[-1].desired["general"] < right[-1].desired["general"]


def test_a_fleet_missing_more_than_predicted_grows() -> None:
    right, worse = run(1.0), run(4.0)
    assert worse[-1].tpot_tail_ratio > 1.0
    assert worse[-1].desired["general"] > right[-1].desired["general"]


def test_the_ratio_forgets_what_is_older_than_the_window() -> None:
    cfg = AutoscalerConfig(ttft_target_s=3.0, tpot_target_s=0.1, max_replicas=16)
    state = ScalerState(tail=((0.0, 0.0, 500.0),), tpot_tail_ratio=0.01)
    s = LoadSample(now=cfg.scale_down_window_s + 60.0, arrival_rate=0.0, mean_prompt_tokens=1.0,
                   mean_output_tokens=1.0, ready={"general": 1})  # fmt: skip
    d, new = decide(cfg, H100_70B, s, replace(state))
    assert new.tail == () and d.tpot_tail_ratio == 1.0
