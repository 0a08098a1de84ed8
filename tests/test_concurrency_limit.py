"""The adaptive per-instance concurrency limit: shrinks when requests queue in the engine,
grows back when they do not and the limit is what holds traffic, never leaves [1, cap]."""

from __future__ import annotations

import itertools

import pytest

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.concurrency_limit import AdaptiveLimit, ConcurrencyLimits, LimitConfig

from .helpers import item, state

STEP = 0.02  # seconds per engine step
RATE = 1e-4  # seconds per prompt token when the engine prefills at once


def alone(prompt: int) -> float:
    return STEP + prompt * RATE


def test_no_queueing_keeps_the_limit_at_the_cap() -> None:
    lim = AdaptiveLimit(64)
    for _ in range(50):
        lim.observe(alone(1000), 1000, STEP, in_flight=64)
    assert lim.current == 64
    assert lim.last_delay_s == pytest.approx(0.0, abs=1e-9)


def test_queueing_beyond_the_tolerance_shrinks_the_limit_monotonically() -> None:
    lim = AdaptiveLimit(64)
    lim.observe(alone(1000), 1000, STEP, in_flight=64)  # learns the unloaded prefill rate
    seen = [lim.limit]
    for _ in range(40):
        lim.observe(alone(1000) + 10 * STEP, 1000, STEP, in_flight=64)  # waited 10 steps
        seen.append(lim.limit)
    assert all(b <= a for a, b in itertools.pairwise(seen))
    # Equilibrium where the sqrt(limit) allowance balances the gradient (0.5 here): small.
    assert lim.current < 16
    assert lim.current >= 1


def test_delay_within_the_tolerance_does_not_shrink() -> None:
    lim = AdaptiveLimit(32)
    lim.observe(alone(500), 500, STEP, in_flight=32)
    for _ in range(20):
        lim.observe(alone(500) + 1.5 * STEP, 500, STEP, in_flight=32)  # under 2 steps
    assert lim.current == 32


def test_the_limit_grows_back_only_while_it_is_used() -> None:
    lim = AdaptiveLimit(64, limit=8.0)
    lim.observe(alone(200), 200, STEP, in_flight=8)
    for _ in range(10):
        lim.observe(alone(200), 200, STEP, in_flight=2)  # app-limited: below half the limit
    assert lim.current == 8
    for _ in range(30):
        lim.observe(alone(200), 200, STEP, in_flight=lim.current)
    assert lim.current > 16
    assert lim.current <= 64


def test_unloaded_ttft_follows_the_fastest_prefill_rate_seen() -> None:
    lim = AdaptiveLimit(16)
    lim.observe(2000 * RATE * 3, 2000, STEP, in_flight=1)  # slow sample first
    lim.observe(2000 * RATE, 2000, STEP, in_flight=1)
    assert lim.prefill_rate.get(0.0) == pytest.approx(RATE)
    assert lim.unloaded_ttft_s(1000, STEP) == pytest.approx(STEP + 1000 * RATE)


def test_no_step_time_yet_means_no_judgement() -> None:
    lim = AdaptiveLimit(16)
    lim.observe(5.0, 100, 0.0, in_flight=16)
    assert lim.current == 16 and lim.samples == 0


def test_bad_configuration_is_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match="tolerance_steps"):
        LimitConfig(tolerance_steps=0)
    with pytest.raises(ValueError, match="smoothing"):
        LimitConfig(smoothing=1.5)
    with pytest.raises(ValueError, match="max_limit"):
        AdaptiveLimit(0)


def test_manager_admits_up_to_the_adaptive_limit() -> None:
    m = ControlPlaneManager(scheduling_policy="fifo", adaptive_concurrency=True)
    s = state("a", cap=10, in_flight=3)
    assert m.limits is not None
    lim = m.limits.of(s)
    assert m.pools.has_room(s, item(1))
    lim.limit = 3.0
    assert not m.pools.has_room(s, item(2))
    s.in_flight = 2
    assert m.pools.has_room(s, item(3))


def test_limits_reset_when_an_instance_changes_capacity() -> None:
    limits = ConcurrencyLimits()
    s = state("a", cap=10)
    limits.of(s).limit = 2.0
    s2 = state("a", cap=20)
    assert limits.of(s2).current == 20
