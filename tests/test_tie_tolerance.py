"""prefix_aware's default (and every other least-TTFT router) ties predicted TTFTs within one decode step measured against the
TPOT objective's headroom (`routing.tie_tolerance`): near the TPOT objective a request gives
up some of its own TTFT, never past its TTFT objective, to spare the sequences decoding where
the least-TTFT instance is; far from it, placement is least TTFT as before."""

from __future__ import annotations

import pytest

from sage_cp_plugin import load_model as lm
from sage_cp_plugin.routing import (
    AffinityRouter,
    KVAwareRouter,
    LoadBalancedRouter,
    PrefixAwareRouter,
    Router,
)
from sage_cp_plugin.routing.give_way import home_unless_slower
from sage_cp_plugin.routing.tie_tolerance import tie_tolerance
from sage_cp_plugin.state import InstanceState
from tests.helpers import fleet, item, state

STEP = 0.08  # learnt decode step (the TPOT the instances see), seconds
PROMPT = "words of a long prompt " * 400


def test_tolerance_is_one_step_without_both_objectives() -> None:
    assert tie_tolerance(item(1), STEP) == STEP
    assert tie_tolerance(item(1, tpot_slo_ms=100.0), STEP) == STEP
    assert tie_tolerance(item(1, ttft_slo_ms=1000.0), STEP) == STEP


def test_tolerance_grows_as_the_step_nears_the_tpot_objective() -> None:
    both = {"ttft_slo_ms": 1000.0}
    far = tie_tolerance(item(1, tpot_slo_ms=1000.0, **both), STEP)  # rho 0.08
    near = tie_tolerance(item(1, tpot_slo_ms=100.0, **both), STEP)  # rho 0.8
    assert far == pytest.approx(STEP / (1 - 0.08))
    assert near == pytest.approx(STEP / (1 - 0.8))  # 0.4 s
    # Capped by the request's own TTFT objective; that objective once the step reaches tau.
    assert tie_tolerance(item(1, tpot_slo_ms=100.0, ttft_slo_ms=300.0), STEP) == 0.3
    assert tie_tolerance(item(1, tpot_slo_ms=50.0, **both), STEP) == 1.0
    # Never below one step, even with a TTFT objective shorter than a step.
    assert tie_tolerance(item(1, tpot_slo_ms=100.0, ttft_slo_ms=10.0), STEP) == STEP


def _fleet() -> tuple[InstanceState, InstanceState]:
    """a: nothing queued, 40 sequences decoding; b: 3,000 tokens queued, nothing decoding.
    Both learnt a decode step of STEP."""
    a, b = state("a"), state("b")
    for _ in range(40):
        lm.first_token(lm.book(a, 200, 50, 0, now=0.0), now=0.0)
    lm.book(b, 3000, 10, 0, now=0.0)
    for s in (a, b):
        lm.observe_decode(s, STEP)
    return a, b


def test_default_spares_the_decodes_when_their_tpot_is_near_its_objective() -> None:
    a, b = _fleet()
    f = fleet(a, b)
    probe = item(1, prompt=PROMPT)
    gap = lm.predicted_ttft_s(b, probe.input_tokens, 0.0) - lm.predicted_ttft_s(
        a, probe.input_tokens, 0.0
    )
    assert lm.decode_step_s(a) == pytest.approx(STEP)
    assert STEP < gap < 0.3  # a is faster to first token by more than a step
    slo = {"ttft_slo_ms": 1000.0, "tpot_slo_ms": 100.0}  # rho 0.8: ties within 0.4 s
    # The former rule (one decode step) takes a and stalls its 40 decodes.
    assert PrefixAwareRouter(score="ttft").select(item(1, prompt=PROMPT, **slo), [a, b], f) is a
    r = PrefixAwareRouter()
    assert r.select(item(1, prompt=PROMPT, **slo), [a, b], f) is b
    assert r.select(item(2, prompt=PROMPT, **slo), [b, a], f) is b  # not the order
    # The TPOT objective far above the step (rho 0.08): one step, least TTFT, a.
    far = {"ttft_slo_ms": 1000.0, "tpot_slo_ms": 1000.0}
    assert r.select(item(1, prompt=PROMPT, **far), [a, b], f) is a
    # A TTFT objective tighter than the gap caps the trade: a.
    tight = {"ttft_slo_ms": 1000.0 * STEP, "tpot_slo_ms": 100.0}
    assert r.select(item(1, prompt=PROMPT, **tight), [a, b], f) is a
    # No objectives: least TTFT, a.
    assert r.select(item(1, prompt=PROMPT), [a, b], f) is a


@pytest.mark.parametrize(
    "router",
    [LoadBalancedRouter(), KVAwareRouter(), AffinityRouter()],  # affinity: a request without a user
    ids=["load_balanced", "kv_aware", "affinity_without_user"],
)
def test_every_least_ttft_router_ties_by_the_same_rule(router: Router) -> None:
    # The other least-TTFT routers place as prefix_aware does: with one decode step they kept
    # every instance prefilling on Azure code and lost goodput to round-robin
    # (benchmarks/results/matrix_routers_s12.md).
    a, b = _fleet()
    f = fleet(a, b)
    slo = {"ttft_slo_ms": 1000.0, "tpot_slo_ms": 100.0}  # rho 0.8: ties within 0.4 s
    assert router.select(item(1, prompt=PROMPT, **slo), [a, b], f) is b
    assert router.select(item(2, prompt=PROMPT, **slo), [b, a], f) is b
    # Far from the TPOT objective, or without objectives: least TTFT, a.
    far = {"ttft_slo_ms": 1000.0, "tpot_slo_ms": 1000.0}
    assert router.select(item(1, prompt=PROMPT, **far), [a, b], f) is a
    assert router.select(item(1, prompt=PROMPT), [a, b], f) is a


def test_a_home_that_gives_way_sends_the_request_where_prefix_aware_would() -> None:
    # affinity's and locality's home, slower than the best by far more than a step, gives way;
    # the request then goes where prefix_aware sends it: b, sparing a's 40 decodes.
    a, b = _fleet()
    home = state("home")
    lm.book(home, 16000, 10, 0, now=0.0)
    lm.observe_decode(home, STEP)
    cands = [home, a, b]
    f = fleet(*cands)
    slo = {"ttft_slo_ms": 1000.0, "tpot_slo_ms": 100.0}
    probe = item(1, prompt=PROMPT, **slo)
    assert home_unless_slower(probe, home, cands, f) is b
    assert home_unless_slower(probe, home, cands, f) is PrefixAwareRouter().select(probe, cands, f)
    # Without objectives: one step, least TTFT, a.
    assert home_unless_slower(item(1, prompt=PROMPT), home, cands, f) is a
