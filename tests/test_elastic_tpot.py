"""The TPOT tail (elastic/tpot.py) and the SLO sizing built on it (elastic/sizing.py): the
compound-Poisson tail against sampling, the miss model against a seeded step-by-step
simulation of the mechanism it describes, and the replica counts that follow."""

from __future__ import annotations

import numpy as np
import pytest

from sage_cp_plugin.elastic.autoscaler import (
    AutoscalerConfig,
    LoadSample,
    ScalerState,
    decide,
    raw_replicas,
)
from sage_cp_plugin.elastic.capacity import StepModel, general_replicas
from sage_cp_plugin.elastic.sizing import general_miss, slo_replicas
from sage_cp_plugin.elastic.tpot import (
    compound_poisson_tail,
    length_samples,
    summarise,
    tpot_miss,
)
from sage_cp_plugin.elastic.ttft import Lengths
from sage_cp_plugin.workloads.traces import load_trace

# Llama-3.3-70B on 4 x H100 (the simulator's published fit), 64 requests per replica.
H100_70B = StepModel.from_sim(12.6, 76.4, 66.8, max_num_seqs=64)


def replica_tpots(m: StepModel, rate: float, prompts: np.ndarray, outputs: np.ndarray,
                  seconds: float, seed: int = 0, budget: int = 8192) -> np.ndarray:  # fmt: skip
    """TPOTs of multi-token requests on one replica run step by step: each step prefills waiting prompts within ``budget`` tokens (chunked, in arrival order),
    decodes every running request once, and lasts ``b0 + b1 * prefill + b2 * running``."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    pick = rng.integers(0, len(prompts), n)
    p, o = prompts[pick], outputs[pick]
    t, i = 0.0, 0
    waiting: list[list[int]] = []  # [prompt tokens left, request]
    running: dict[int, list[float]] = {}  # request -> [tokens so far, first-token time]
    tpots: list[float] = []
    while i < n or waiting or running:
        if not waiting and not running:
            t = max(t, float(arrivals[i]))
        while i < n and arrivals[i] <= t:
            waiting.append([int(p[i]), i])
            i += 1
        left, prefill, prefilled = budget, 0, []
        for w in waiting:
            if left <= 0:
                break
            take = min(w[0], left)
            w[0], left, prefill = w[0] - take, left - take, prefill + take
            if w[0] == 0:
                prefilled.append(w[1])
        waiting = [w for w in waiting if w[0] > 0]
        t += m.b0_s + m.b1_s_per_token * prefill + m.b2_s_per_seq * len(running)
        for j in list(running):
            running[j][0] += 1
            if running[j][0] >= o[j]:
                tpots.append((t - running[j][1]) / (o[j] - 1))
                del running[j]
        for j in prefilled:
            if o[j] > 1:
                running[j] = [1, t]
    return np.array(tpots[len(tpots) // 10 :])  # past the empty start


def test_compound_poisson_tail_matches_sampling() -> None:
    rng = np.random.default_rng(1)
    marks = rng.integers(100, 4000, 200).astype(float)
    for lam, threshold in ((0.5, 1000.0), (3.0, 5000.0), (10.0, 20000.0), (200.0, 450000.0)):
        counts = rng.poisson(lam, 20000)
        sums = np.array([rng.choice(marks, c).sum() if c else 0.0 for c in counts])
        assert compound_poisson_tail(lam, marks, threshold) == pytest.approx(
            float(np.mean(sums > threshold)), abs=0.015)  # fmt: skip
    assert compound_poisson_tail(3.0, marks, -1.0) == 1.0
    assert compound_poisson_tail(0.0, marks, 10.0) == 0.0


def test_length_samples_keep_the_mean_and_spread() -> None:
    s = np.array(length_samples(200.0, 1.5, n=400))
    assert s.mean() == pytest.approx(200.0, rel=0.03)
    assert s.var() / s.mean() ** 2 == pytest.approx(1.5, rel=0.2)
    assert length_samples(200.0, 0.0, n=4) == (200.0,) * 4
    assert summarise([]) == () and summarise([5, 5, 5], n=3) == (5.0, 5.0, 5.0)


@pytest.mark.parametrize(("lengths", "rate"), [("long_prompts_short_answers", 1.5),
                                               ("long_prompts_short_answers", 3.0),
                                               ("short_answers_mixed", 2.0)])  # fmt: skip
def test_tpot_miss_predicts_a_step_by_step_replica(lengths: str, rate: float) -> None:
    rng = np.random.default_rng(3)
    if lengths == "long_prompts_short_answers":  # Mooncake-like: 2,700-token prompts
        prompts = rng.lognormal(np.log(2000), 0.7, 4000).clip(16, 4000)
        outputs = rng.lognormal(np.log(60), 1.2, 4000).clip(1, 1000).round()
    else:  # azure_code-like: 1,700-token prompts, answers of 6-60 tokens
        prompts = rng.lognormal(np.log(1400), 0.8, 4000).clip(16, 4000)
        outputs = rng.lognormal(np.log(15), 0.7, 4000).clip(6, 500).round()
    measured = float(np.mean(replica_tpots(H100_70B, rate, prompts, outputs, seconds=2500) > 0.1))
    predicted = tpot_miss(H100_70B, rate, summarise(outputs), summarise(prompts), 0.1)
    # Under-predicting costs the SLO, over-predicting costs replicas: at most 25 % below the
    # measured share, at most 60 % above it (0.5 point either way when both are small). The
    # model errs high on azure_code-like mixes (1.8 % vs 1.2 % measured at 2 req/s).
    assert 0.75 * measured - 0.005 <= predicted <= 1.6 * measured + 0.005, (predicted, measured)


def test_short_answers_and_busier_replicas_miss_more() -> None:
    prompts = length_samples(1800.0, 0.6)
    short, long = length_samples(15.0, 0.5), length_samples(300.0, 0.5)
    assert tpot_miss(H100_70B, 2.0, short, prompts, 0.1) > tpot_miss(H100_70B, 2.0, long, prompts,
                                                                      0.1)  # fmt: skip
    assert tpot_miss(H100_70B, 3.0, short, prompts, 0.1) > tpot_miss(H100_70B, 1.0, short, prompts,
                                                                      0.1)  # fmt: skip
    assert tpot_miss(H100_70B, 2.0, (1.0,) * 8, prompts, 0.1) == 0.0  # one token: no TPOT
    assert tpot_miss(H100_70B, 50.0, short, prompts, 0.1) == 1.0  # past saturation


def test_slo_replicas_is_the_fewest_that_meet_the_budget() -> None:
    mix = Lengths(1800.0, 25.0, 0.6, 4.0, outputs=length_samples(25.0, 4.0))
    targets = {"ttft_target_s": 3.0, "tpot_target_s": 0.1}
    for rate in (2.0, 6.0, 12.0):
        c = slo_replicas(H100_70B, rate, mix, attainment=0.99, max_replicas=64, **targets)
        assert general_miss(H100_70B, rate, c, mix, **targets).total <= 0.01
        if c > 1:
            assert general_miss(H100_70B, rate, c - 1, mix, **targets).total > 0.01
    assert slo_replicas(H100_70B, 0.0, mix, attainment=0.99, max_replicas=8, **targets) == 0


def test_short_answers_need_more_replicas_than_the_mean_tpot_says() -> None:
    """The decision change: at the same work per request, a mix of short answers after long
    prompts needs more replicas than the mean-TPOT bound (which sees only the means), and the
    planner never goes below that bound at full use."""
    cfg = AutoscalerConfig(ttft_target_s=3.0, tpot_target_s=0.1)
    outs = length_samples(28.0, 4.6)  # azure_code's output mean and cv^2
    tails = raw_replicas(cfg, H100_70B, 12.0, 1750.0, 28.0, 1.0, 1.0, prompt_cv2=0.5,
                         output_cv2=4.6, outputs=outs)["general"]  # fmt: skip
    mean_only = general_replicas(12.0, 1750.0, 28.0, H100_70B, tpot_target_s=0.1,
                                 utilisation=cfg.utilisation)  # fmt: skip
    assert tails > mean_only
    conv = raw_replicas(cfg, H100_70B, 12.0, 1138.0, 211.0, 1.0, 1.0, prompt_cv2=0.86,
                        output_cv2=0.6)["general"]  # fmt: skip
    floor = general_replicas(12.0, 1138.0, 211.0, H100_70B, tpot_target_s=0.1, utilisation=1.0)
    assert conv >= floor


def test_a_right_model_is_not_corrected_into_more_replicas() -> None:
    """Observed TPOT equal to what a step-by-step replica measures on Mooncake's lengths
    (short answers after long prompts: the per-request mean is above the step-time mean):
    the correction stays near 1 (the model errs ~5 % high there) and the fleet stays at most
    at the uncorrected planner's count, what a static fleet sized by it would have."""
    records = load_trace("mooncake", max_input_tokens=4000)
    prompts = np.array([r.input_tokens for r in records], dtype=float)
    outputs = np.array([r.output_tokens for r in records], dtype=float)
    p, o = summarise(prompts), summarise(outputs)
    cfg = AutoscalerConfig(ttft_target_s=3.0, tpot_target_s=0.1, cold_start_s=120)
    rate, isl, osl = 3.0, float(prompts.mean()), float(outputs.mean())
    planned = raw_replicas(cfg, H100_70B, rate, isl, osl, 1.0, 1.0, prompts=p,
                           outputs=o)["general"]  # fmt: skip
    per = rate / planned
    measured = float(replica_tpots(H100_70B, per, prompts, outputs, seconds=3000).mean())
    assert measured > 1.08 * H100_70B.predicted_tpot_s(per, isl, osl)  # the gap
    fleet, state = planned, ScalerState()
    for i in range(40):
        s = LoadSample(now=30.0 * i, arrival_rate=rate, mean_prompt_tokens=isl,
                       mean_output_tokens=osl, completed=90, observed_tpot_s=measured,
                       prompt_cv2=float(prompts.var() / isl**2),
                       output_cv2=float(outputs.var() / osl**2), prompt_lengths=p,
                       output_lengths=o, ready={"general": fleet})  # fmt: skip
        d, state = decide(cfg, H100_70B, s, state)
        fleet = d.desired["general"]
    assert 0.9 < d.tpot_correction < 1.04  # against the step-time mean it would be > 1.08
    assert fleet <= planned  # not inflated past the static fleet's count


def test_scale_down_keeps_the_predicted_slo_for_every_rate_in_the_window() -> None:
    """After a drop, the fleet shrinks only once the stabilisation window holds no rate the
    smaller fleet is predicted to miss the SLO at, and then to a count that meets it."""
    records = load_trace("mooncake", max_input_tokens=4000)
    prompts = [float(r.input_tokens) for r in records]
    outputs = [float(r.output_tokens) for r in records]
    p, o = summarise(prompts), summarise(outputs)
    isl, osl = float(np.mean(prompts)), float(np.mean(outputs))
    mix = Lengths(isl, osl, prompts=p, outputs=o)
    cfg = AutoscalerConfig(ttft_target_s=3.0, tpot_target_s=0.1, cold_start_s=120)
    rates = [4.0] * 20 + [1.0] * 40
    fleet, state, seen = 1, ScalerState(), []
    downs = 0
    for i, rate in enumerate(rates):
        now = cfg.interval_s * i
        seen.append((now, rate))
        s = LoadSample(now=now, arrival_rate=rate, mean_prompt_tokens=isl, mean_output_tokens=osl,
                       completed=100, prompt_lengths=p, output_lengths=o,
                       ready={"general": fleet})  # fmt: skip
        d, state = decide(cfg, H100_70B, s, state)
        new = d.desired["general"]
        if new < fleet:
            downs += 1
            window = [r for t, r in seen if t >= now - cfg.scale_down_window_s]
            for r in window:
                miss = general_miss(H100_70B, r, new, mix, ttft_target_s=3.0, tpot_target_s=0.1)
                assert miss.total <= 1 - cfg.slo_attainment, (now, r, new, miss)
        fleet = new
    assert downs >= 1 and fleet < raw_replicas(cfg, H100_70B, 4.0, isl, osl, 1.0, 1.0, prompts=p,
                                               outputs=o)["general"]  # fmt: skip
