"""The adaptive per-instance concurrency limit: shrinks when requests queue in the engine,
grows back when they do not and the limit is what holds traffic, never leaves [1, cap]."""

from __future__ import annotations

import itertools

import pytest

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin import load_model as lm
from sage_cp_plugin.concurrency_limit import AdaptiveLimit, ConcurrencyLimits, LimitConfig
from sage_cp_plugin.disaggregation import Disaggregator
from sage_cp_plugin.dispatch import Dispatcher
from sage_cp_plugin.types import PDSeparationConfig

from .helpers import item, state

STEP = 0.02  # seconds per engine step
RATE = 1e-4  # seconds per prompt token when the engine prefills at once


def alone(prompt: int) -> float:
    return STEP + prompt * RATE


def test_no_queueing_keeps_the_limit_at_the_cap() -> None:
    lim = AdaptiveLimit(64)
    for _ in range(50):
        lim.observe(alone(1000), alone(1000), STEP, in_flight=64)
    assert lim.current == 64
    assert lim.last_delay_s == pytest.approx(0.0, abs=1e-9)


def test_queueing_beyond_the_tolerance_shrinks_the_limit_monotonically() -> None:
    lim = AdaptiveLimit(64)
    lim.observe(alone(1000), alone(1000), STEP, in_flight=64)
    seen = [lim.limit]
    for _ in range(40):
        lim.observe(alone(1000) + 10 * STEP, alone(1000), STEP, in_flight=64)  # waited 10 steps
        seen.append(lim.limit)
    assert all(b <= a for a, b in itertools.pairwise(seen))
    # Equilibrium where the sqrt(limit) allowance balances the gradient (0.5 here): small.
    assert lim.current < 16
    assert lim.current >= 1


def test_delay_within_the_tolerance_does_not_shrink() -> None:
    lim = AdaptiveLimit(32)
    lim.observe(alone(500), alone(500), STEP, in_flight=32)
    for _ in range(20):
        lim.observe(alone(500) + 1.5 * STEP, alone(500), STEP, in_flight=32)  # under 2 steps
    assert lim.current == 32


def test_the_limit_grows_back_only_while_it_is_used() -> None:
    lim = AdaptiveLimit(64, limit=8.0)
    lim.observe(alone(200), alone(200), STEP, in_flight=8)
    for _ in range(10):
        lim.observe(alone(200), alone(200), STEP, in_flight=2)  # app-limited: below half the limit
    assert lim.current == 8
    for _ in range(30):
        lim.observe(alone(200), alone(200), STEP, in_flight=lim.current)
    assert lim.current > 16
    assert lim.current <= 64


def test_unloaded_ttft_is_the_load_models_prediction_with_nothing_ahead() -> None:
    # One prefill-speed estimator: the limit judges delay against the speed the load model
    # learnt from first tokens, not a rate of its own.
    s = state("a", cap=16)
    s.decode_s_per_token.add(STEP)
    for k in range(30):
        b = lm.book(s, 2000, 10, 0, now=float(k))
        lm.first_token(b, now=k + STEP + 2000 * RATE)  # alone: one step plus its prompt
        lm.release(b, now=k + 0.5)
    assert lm.unloaded_ttft_s(s, 1000) == pytest.approx(STEP + 1000 * RATE, rel=0.05)
    limits = ConcurrencyLimits()
    s.in_flight = 16
    limits.observe(s, alone(1000), 1000)
    assert limits.of(s).last_delay_s == pytest.approx(0.0, abs=0.1 * STEP)
    limits.observe(s, alone(1000) + 10 * STEP, 1000)  # waited ten steps in the engine
    assert limits.of(s).last_delay_s == pytest.approx(10 * STEP, rel=0.05)
    assert limits.of(s).current < 16


def test_admission_is_gated_on_the_predicted_prefill_wait() -> None:
    # A burst would otherwise all be forwarded while the (request-counted) limit is high;
    # the predicted wait holds it back at once, and the first token lets the next one go.
    limits = ConcurrencyLimits()
    s = state("a", cap=64)
    assert limits.prefill_fits(s, 0.0)  # nothing queued: always
    s.decode_s_per_token.add(STEP)
    first = lm.book(s, 300, 10, 0, now=0.0)  # ~ one step of prefill ahead: fits
    assert lm.queue_wait_s(s, 0.0) <= 2 * STEP
    assert limits.prefill_fits(s, 0.0)
    lm.book(s, 4000, 10, 0, now=0.0)  # far more than two steps of prefill queued
    assert not limits.prefill_fits(s, 0.0)
    assert limits.of(s).allows(s.in_flight)  # the request-counted limit alone would admit
    lm.first_token(first, now=0.05)
    assert not limits.prefill_fits(s, 0.05)  # the long prompt is still ahead
    m = ControlPlaneManager(scheduling_policy="fifo", adaptive_concurrency=True)
    assert not m.pools.has_room(s, item(1))
    off = ControlPlaneManager(scheduling_policy="fifo")  # without the option: slots only
    assert off.pools.has_room(s, item(2))


def test_dispatcher_and_disaggregator_read_the_same_predicted_wait() -> None:
    s = state("p", cap=8)
    lm.book(s, 6000, 10, 0, now=0.0)
    lm.book(s, 3000, 10, 0, now=0.0)
    expected = lm.prefill_time_s(s, lm.prefill_ahead(s, 0.1))
    assert expected > 0
    assert Dispatcher._wait_s(s, 0.1) == pytest.approx(expected)
    assert Disaggregator.prefill_wait_s(s, 0.1) == pytest.approx(expected)
    # More prefill queued means a longer predicted wait.
    lm.book(s, 3000, 10, 0, now=0.1)
    assert Dispatcher._wait_s(s, 0.1) > expected
    assert Disaggregator(PDSeparationConfig()).prefill_wait_s(s, 0.1) > expected


def test_no_step_time_yet_means_no_judgement() -> None:
    lim = AdaptiveLimit(16)
    lim.observe(5.0, alone(100), 0.0, in_flight=16)
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


def test_a_prefill_instance_that_never_decoded_is_gated_by_its_chunk_step() -> None:
    """A prefill instance of a disaggregated fleet may never decode (its split requests
    leave after their first token), so it has no decode step to gate by. Its step is a
    chunk of prefill: it takes new work while the prefill queued on it starts within two of
    those, and the rest waits in the coordinator's queue (before: it took every request,
    and a burst queued seconds of prompts inside it)."""
    limits = ConcurrencyLimits()
    p = state("p", cap=64, instance_type="prefilling")
    p.prefill_s_per_token.add(RATE)
    chunk_step = lm.prefill_time_s(p, lm.chunk_tokens(p))
    assert limits.tolerated_wait_s(p) == pytest.approx(2 * chunk_step)
    lm.book(p, lm.chunk_tokens(p), 10, 0, now=0.0)  # one chunk queued: fits
    assert limits.prefill_fits(p, 0.0)
    lm.book(p, 2 * lm.chunk_tokens(p), 10, 0, now=0.0)  # three chunks: does not
    assert not limits.prefill_fits(p, 0.0)


def test_a_cold_instance_is_gated_by_the_load_models_prior_step() -> None:
    """Before any decode step is measured (the first requests of a run have not produced a
    second token yet) a general instance is judged by the load model's prior step: a burst
    that opens a run waits in the coordinator's queue, where the policy orders it, instead
    of filling the engines in arrival order (before: no gate until a step was learnt)."""
    limits = ConcurrencyLimits()
    g = state("g", cap=64)
    assert limits.tolerated_wait_s(g) == pytest.approx(2 * lm.decode_step_s(g))
    assert limits.prefill_fits(g, 0.0)  # nothing queued: always
    lm.book(g, 3 * lm.chunk_tokens(g), 10, 0, now=0.0)
    assert not limits.prefill_fits(g, 0.0)
    g.decode_s_per_token.add(STEP)  # a measured step replaces the prior
    assert limits.tolerated_wait_s(g) == pytest.approx(2 * STEP)
