"""The TTFT-aware capacity model (elastic/ttft.py): queueing formulas against their closed forms
and against a seeded simulation of the queue they describe, and the sizing they lead to."""

from __future__ import annotations

import heapq
import itertools
import math

import numpy as np
import pytest

from sage_cp_plugin.elastic.autoscaler import (
    AutoscalerConfig,
    LoadSample,
    ScalerState,
    decide,
    raw_replicas,
)
from sage_cp_plugin.elastic.capacity import StepModel
from sage_cp_plugin.elastic.controller import _cv2
from sage_cp_plugin.elastic.ttft import (
    Lengths,
    erlang_c,
    general_ttft,
    mgm_mean_wait,
    mgm_wait_tail,
    prefill_ttft,
    ttft_replicas,
)

# Llama-3.3-70B on 4 x H100 (the simulator's published fit), 64 requests per replica.
H100_70B = StepModel.from_sim(12.6, 76.4, 66.8, max_num_seqs=64)
CONV = Lengths(isl=1138, osl=211, isl_cv2=0.86, osl_cv2=0.60)  # azure_conv's mix


def fcfs_waits(servers: int, rate: float, holds: np.ndarray, seed: int = 0) -> np.ndarray:
    """Waits in a first-come-first-served queue with ``servers`` and Poisson arrivals."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, len(holds)))
    free = [0.0] * servers
    waits = np.empty(len(holds))
    for k, (t, h) in enumerate(zip(arrivals, holds, strict=True)):
        start = max(t, heapq.heappop(free))
        waits[k] = start - t
        heapq.heappush(free, start + h)
    return waits


def test_erlang_c_closed_forms() -> None:
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # M/M/2 at a = 1, by hand
    assert erlang_c(3, 3.0) == 1.0 and erlang_c(3, 0.0) == 0.0
    # More servers at the same utilisation: less waiting (the pooling a bigger fleet buys).
    assert erlang_c(64, 0.9 * 64) < erlang_c(8, 0.9 * 8) < erlang_c(1, 0.9)


def test_mm1_and_md1_are_exact() -> None:
    lam, hold = 0.8, 1.0
    assert mgm_mean_wait(1, lam, hold, 1.0) == pytest.approx(lam / (1 - lam))  # M/M/1
    assert mgm_mean_wait(1, lam, hold, 0.0) == pytest.approx(lam / (2 * (1 - lam)))  # M/D/1 (P-K)
    assert mgm_wait_tail(1, lam, hold, 1.0, 2.0) == pytest.approx(lam * math.exp(-(1 - lam) * 2))
    assert mgm_mean_wait(2, 2.5, 1.0, 1.0) == math.inf and mgm_wait_tail(2, 2.5, 1.0, 1.0, 5) == 1


def test_mmc_tail_matches_a_simulated_queue() -> None:
    servers, rate, n = 3, 2.4, 200_000  # utilisation 0.8
    holds = np.random.default_rng(1).exponential(1.0, n)
    waits = fcfs_waits(servers, rate, holds)[1000:]
    for t in (0.0, 0.5, 1.5):
        assert np.mean(waits > t) == pytest.approx(mgm_wait_tail(servers, rate, 1.0, 1.0, t),
                                                   rel=0.08)  # fmt: skip
    assert waits.mean() == pytest.approx(mgm_mean_wait(servers, rate, 1.0, 1.0), rel=0.08)


def test_heavy_tailed_holds_wait_longer_as_allen_cunneen_says() -> None:
    servers, rate, n = 4, 3.2, 200_000
    rng = np.random.default_rng(2)
    # Lognormal holds with mean 1 and cv^2 = 3 (sigma^2 = ln 4).
    sigma = math.sqrt(math.log(4.0))
    holds = rng.lognormal(-sigma**2 / 2, sigma, n)
    waits = fcfs_waits(servers, rate, holds)[1000:]
    predicted = mgm_mean_wait(servers, rate, 1.0, 3.0)
    assert predicted > 1.9 * mgm_mean_wait(servers, rate, 1.0, 1.0)
    assert waits.mean() == pytest.approx(predicted, rel=0.35)  # an approximation, not exact


def test_ttft_replicas_is_the_fewest_that_meet_the_attainment() -> None:
    for rate in (3.0, 12.0, 30.0):
        c = ttft_replicas(H100_70B, rate, CONV, target_s=0.6, attainment=0.99, max_replicas=64)
        assert general_ttft(H100_70B, rate, c, CONV, 0.6).miss <= 0.01
        assert c == 1 or general_ttft(H100_70B, rate, c - 1, CONV, 0.6).miss > 0.01
    misses = [general_ttft(H100_70B, 12.0, c, CONV, 0.6).miss for c in range(1, 10)]
    assert all(a >= b for a, b in itertools.pairwise(misses))  # more replicas, fewer
    assert ttft_replicas(H100_70B, 0.0, CONV, target_s=0.6, attainment=0.99, max_replicas=8) == 0


def test_tighter_targets_and_wilder_prompts_need_more_replicas() -> None:
    def need(mix: Lengths, target: float, correction: float = 1.0) -> int:
        return ttft_replicas(H100_70B, 20.0, mix, target_s=target, attainment=0.99,
                             max_replicas=64, correction=correction)  # fmt: skip

    loose, tight = need(CONV, 3.0), need(CONV, 0.5)
    assert tight > loose
    wild = Lengths(CONV.isl, CONV.osl, isl_cv2=4.0, osl_cv2=CONV.osl_cv2)
    assert need(wild, 0.5) > tight
    # The observed/predicted TTFT ratio tightens the target: 2x slow = half the target.
    assert need(CONV, 1.0, correction=2.0) == need(CONV, 0.5)


def test_prefill_role_is_mgc_over_prefills() -> None:
    mix = Lengths(isl=4000, osl=50, isl_cv2=0.0)
    own = H100_70B.b0_s + 4000 * H100_70B.b1_s_per_token
    e = prefill_ttft(H100_70B, 2.0, 1, mix, 2.0)
    assert e.own_prefill_s == pytest.approx(own)
    assert e.slot_wait_s == pytest.approx(mgm_mean_wait(1, 2.0, own, 0.0))
    assert prefill_ttft(H100_70B, 5.0, 1, mix, 2.0).miss == 1.0  # 5 x 0.32 s > 1: saturated


def test_autoscaler_takes_the_larger_of_the_tpot_and_ttft_needs() -> None:
    tpot_only = AutoscalerConfig(ttft_target_s=0.5, tpot_target_s=0.1, slo_attainment=0)
    both = AutoscalerConfig(ttft_target_s=0.5, tpot_target_s=0.1, slo_attainment=0.99)
    a = raw_replicas(tpot_only, H100_70B, 20.0, CONV.isl, CONV.osl, 1.0, 1.0)["general"]
    b = raw_replicas(both, H100_70B, 20.0, CONV.isl, CONV.osl, 1.0, 1.0,
                     prompt_cv2=CONV.isl_cv2, output_cv2=CONV.osl_cv2)["general"]  # fmt: skip
    assert b > a  # a 0.5 s TTFT target binds before the TPOT target does
    loose = AutoscalerConfig(ttft_target_s=30.0, tpot_target_s=0.1)
    assert raw_replicas(loose, H100_70B, 20.0, CONV.isl, CONV.osl, 1.0, 1.0)["general"] == a


def test_observed_ttft_above_the_model_grows_the_fleet() -> None:
    cfg = AutoscalerConfig(ttft_target_s=0.8, tpot_target_s=0.1)

    def final(ttft_x: float) -> tuple[int, float]:
        state, fleet = ScalerState(), 3
        for i in range(20):
            mix = Lengths(CONV.isl, CONV.osl, CONV.isl_cv2, CONV.osl_cv2)
            seen = general_ttft(H100_70B, 15.0, fleet, mix, cfg.ttft_target_s).mean_s * ttft_x
            s = LoadSample(now=30.0 * i, arrival_rate=15.0, mean_prompt_tokens=CONV.isl,
                           mean_output_tokens=CONV.osl, completed=400, observed_ttft_s=seen,
                           prompt_cv2=CONV.isl_cv2, output_cv2=CONV.osl_cv2,
                           ready={"general": fleet})  # fmt: skip
            d, state = decide(cfg, H100_70B, s, state)
            fleet = d.desired["general"]
        return fleet, d.ttft_correction

    as_modelled, slow = final(1.0), final(2.5)
    assert as_modelled[1] == pytest.approx(1.0)
    assert slow[1] > 2.0 and slow[0] > as_modelled[0]


def test_length_variance_from_sums() -> None:
    lengths = np.array([100, 300, 200, 1400])
    cv2 = _cv2(len(lengths), float(lengths.mean()), float((lengths**2).sum()))
    assert cv2 == pytest.approx(lengths.var() / lengths.mean() ** 2)
    assert _cv2(1, 100.0, 1e4) == 1.0  # one request: not measurable, the exponential's


def test_steady_poisson_load_takes_fewer_than_six_actions_an_hour() -> None:
    # Ten hours at a constant rate: counts per 30 s interval are Poisson, observed TTFT/TPOT
    # the model's own prediction times seeded log-normal noise, so only noise changes.
    cfg = AutoscalerConfig(ttft_target_s=1.0, tpot_target_s=0.1, cold_start_s=120)
    rng = np.random.default_rng(7)
    for rate in (2.0, 8.0, 25.0):
        state, fleet, acts = ScalerState(), 1, 0
        for i in range(1200):
            arrived = rng.poisson(rate * cfg.interval_s) / cfg.interval_s
            e = general_ttft(H100_70B, arrived, fleet, CONV, cfg.ttft_target_s)
            noise = float(np.exp(rng.normal(0.0, 0.1)))
            ttft = e.mean_s * noise if math.isfinite(e.mean_s) else None
            tpot = H100_70B.predicted_tpot_s(arrived / fleet, CONV.isl, CONV.osl) * noise
            s = LoadSample(now=cfg.interval_s * i, arrival_rate=arrived, mean_prompt_tokens=CONV.isl,
                           mean_output_tokens=CONV.osl, completed=int(arrived * 30),
                           observed_ttft_s=ttft, observed_tpot_s=tpot if math.isfinite(tpot) else None,
                           prompt_cv2=CONV.isl_cv2, output_cv2=CONV.osl_cv2,
                           ready={"general": fleet})  # fmt: skip
            d, state = decide(cfg, H100_70B, s, state)
            acts += int(d.changed and i >= 120)  # after the first hour's sizing
            fleet = d.desired["general"]
        assert acts / 9.0 < 6, (rate, acts)
