"""The autoscaler is a pure function: fed scripted samples, its decisions are checked."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from sage_cp_plugin.elastic.autoscaler import (
    AutoscalerConfig,
    Decision,
    LoadSample,
    ScalerState,
    decide,
)
from sage_cp_plugin.elastic.capacity import StepModel, general_replicas

# Llama-3.1-8B on an H100, TP1 (the simulator's default coefficients).
H100 = StepModel.from_sim(5.75, 17.25, 6.0)


def run(cfg: AutoscalerConfig, rates: list[float], *, isl: float = 1000, osl: float = 200,
        start: dict[str, int] | None = None, observed_tpot_x: float | None = None,
        ) -> list[Decision]:  # fmt: skip
    """Apply each decision at once (no cold start) and feed the next sample."""
    state, fleet, out = ScalerState(), dict(start or {"general": 1}), []
    for i, rate in enumerate(rates):
        tpot = None
        if observed_tpot_x is not None:
            per = rate / max(fleet.get("general", 1), 1)
            tpot = H100.predicted_tpot_s(per, isl, osl) * observed_tpot_x
        s = LoadSample(now=i * cfg.interval_s, arrival_rate=rate, mean_prompt_tokens=isl,
                       mean_output_tokens=osl, completed=100, observed_tpot_s=tpot,
                       ready=dict(fleet))  # type: ignore[arg-type]  # fmt: skip
        d, state = decide(cfg, H100, s, state)
        fleet = dict(d.desired)
        out.append(d)
    return out


def actions(ds: list[Decision]) -> int:
    return sum(d.changed for d in ds)


def test_capacity_model_matches_its_closed_form() -> None:
    target = 0.05
    # Time-bound (a huge max_num_seqs): one replica at its sized rate meets the TPOT target.
    big = H100.model_copy(update={"max_num_seqs": 100_000})
    r1 = general_replicas(1.0, 1000, 200, big, tpot_target_s=target, utilisation=1.0)
    assert big.predicted_tpot_s(1.0 / r1, 1000, 200) == pytest.approx(target)
    assert general_replicas(10.0, 1000, 200, big, tpot_target_s=target, utilisation=1.0) == (
        pytest.approx(10 * r1)
    )
    # Batch-bound (256 sequences): at its sized rate the running batch is exactly 256.
    r2 = general_replicas(1.0, 1000, 200, H100, tpot_target_s=target, utilisation=1.0)
    x = 1.0 / r2
    assert x * 200 * H100.predicted_tpot_s(x, 1000, 200) == pytest.approx(256)


def test_steady_load_settles_and_stays() -> None:
    cfg = AutoscalerConfig()
    ds = run(cfg, [100.0] * 240)  # two hours at 30 s
    assert actions(ds) == 1  # the first sizing, then nothing
    assert ds[-1].desired["general"] == ds[0].raw["general"] > 1


def test_noisy_steady_load_does_not_flap() -> None:
    cfg = AutoscalerConfig()
    noise = [100.0 * (1 + 0.15 * math.sin(i * 2.3) * math.cos(i * 0.7)) for i in range(240)]
    ds = run(cfg, noise)
    assert actions(ds) / 2.0 < 6  # per hour


def test_rising_load_is_met_ahead_of_the_cold_start() -> None:
    cfg = AutoscalerConfig(cold_start_s=240)
    ramp = [20.0 + 4.0 * i for i in range(40)]
    ds = run(cfg, ramp)
    for i in range(10, 32):  # once the trend is known, the fleet is sized 8 intervals ahead
        ahead = run(AutoscalerConfig(cold_start_s=0), [ramp[i + 8]] * 3)[-1].desired["general"]
        assert ds[i].desired["general"] >= ahead - 1


def test_scale_down_waits_for_the_window_and_cooldown() -> None:
    cfg = AutoscalerConfig(scale_down_window_s=600, scale_down_cooldown_s=300)
    ds = run(cfg, [150.0] * 10 + [15.0] * 40)
    high = ds[9].desired["general"]
    first_down = next(i for i, d in enumerate(ds) if d.desired["general"] < high)
    assert (first_down - 9) * cfg.interval_s >= 600
    assert ds[-1].desired["general"] < high


def test_burst_panics_up_at_once() -> None:
    cfg = AutoscalerConfig(scale_up_cooldown_s=600)
    ds = run(cfg, [25.0] * 5 + [200.0] * 3)
    assert ds[5].desired["general"] >= cfg.panic_factor * ds[4].desired["general"]


def test_observed_latency_corrects_the_model() -> None:
    plain = run(AutoscalerConfig(), [100.0] * 30)
    slow = run(AutoscalerConfig(), [100.0] * 30, observed_tpot_x=2.0)
    assert slow[-1].tpot_correction > 1.5
    assert slow[-1].desired["general"] > plain[-1].desired["general"]


def test_pd_split_follows_the_mix() -> None:
    cfg = AutoscalerConfig(mode="pd")
    long_prompts = run(cfg, [100.0] * 5, isl=8000, osl=50, start={"prefill": 1, "decode": 1})
    long_answers = run(cfg, [100.0] * 5, isl=200, osl=2000, start={"prefill": 1, "decode": 1})
    lp, la = long_prompts[-1].desired, long_answers[-1].desired
    assert lp["prefill"] > lp["decode"] and la["decode"] > la["prefill"]


def test_scale_to_zero_and_back() -> None:
    cfg = AutoscalerConfig(min_replicas=0, scale_down_window_s=300, scale_down_cooldown_s=60)
    ds = run(cfg, [4.0] * 4 + [0.0] * 20 + [4.0])
    assert ds[-2].desired["general"] == 0
    assert ds[-1].desired["general"] >= 1  # first request after zero: up at once


def test_starting_replicas_count_so_the_cold_start_is_not_doubled() -> None:
    cfg = AutoscalerConfig(scale_up_cooldown_s=0)
    s = LoadSample(now=0, arrival_rate=100, mean_prompt_tokens=1000, mean_output_tokens=200,
                   ready={"general": 1})  # fmt: skip
    d1, st = decide(cfg, H100, s, ScalerState())
    assert d1.desired["general"] > 1
    s2 = LoadSample(now=30, arrival_rate=100, mean_prompt_tokens=1000, mean_output_tokens=200,
                    ready={"general": 1}, starting={"general": d1.desired["general"] - 1})  # fmt: skip
    d2, _ = decide(cfg, H100, s2, st)
    assert not d2.changed


def test_no_scale_down_while_asked_for_replicas_are_still_cold() -> None:
    # Seen live (local actuator, closed-loop clients): after "up 1->3" the rate measured on the
    # one serving replica dipped, and the window's peak fell below three before the two new
    # replicas were ready, so the scaler cut a cold one and asked for it again next interval
    # (up, down, up, ...; every up a new cold start, the fleet never reached three).
    cfg = AutoscalerConfig(interval_s=1, cold_start_s=20, scale_down_window_s=3,
                           scale_down_cooldown_s=2)  # fmt: skip
    per_replica = 1 / general_replicas(1.0, 1000, 200, H100, tpot_target_s=cfg.tpot_target_s,
                                       utilisation=cfg.utilisation)  # fmt: skip
    state, ready, asked = ScalerState(), 1, 1
    history = []
    for t in range(40):
        # What one replica can take is all the load it sees until the others serve.
        ready = min(asked, 3) if t >= 20 else 1  # the new ones serve after their cold start
        rate = 2.5 * per_replica if ready == 3 or t < 3 else 1.5 * per_replica
        s = LoadSample(now=t, arrival_rate=rate, mean_prompt_tokens=1000, mean_output_tokens=200,
                       ready={"general": ready}, starting={"general": asked - ready})  # fmt: skip
        d, state = decide(cfg, H100, s, state)
        asked = d.desired["general"]
        history.append(asked)
    assert history[2] == 3  # the step was met
    assert min(history[2:]) >= 3, str(history)  # and never cut while its replicas were cold
    # A replica that never becomes ready does not pin the fleet: overdue, the cut happens
    # (down to one once the rate's window holds only the low load).
    for t in range(40, 40 + int(cfg.forecast_window_s) + 10):
        s = LoadSample(now=t, arrival_rate=0.5 * per_replica, mean_prompt_tokens=1000,
                       mean_output_tokens=200, ready={"general": 1},
                       starting={"general": asked - 1})  # fmt: skip
        d, state = decide(cfg, H100, s, state)
        asked = d.desired["general"]
    assert asked == 1


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        AutoscalerConfig(min_replicas=5, max_replicas=2)
