"""Learnt speeds shared between replicas, on the virtual clock with the in-memory store: each
replica publishes its own estimates, and every replica decides with the estimate over all
replicas' requests (as one process would learn it from every request), not with what its own
share of the requests taught it. A replica that falls silent stops counting."""

from __future__ import annotations

import asyncio

import pytest

from sage_cp_plugin import load_model
from sage_cp_plugin.fleetshare.peers import own_load
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.virtual.clock import run_virtual
from tests.helpers import replica_manager, sharing_replicas


async def _one_request(state: InstanceState, now: float, prefill_s: float, tpot_s: float) -> None:
    """A 1,000-token prompt whose first token comes `prefill_s` later, then its decode."""
    b = load_model.book(state, 1000, 10, 0, now)
    await asyncio.sleep(prefill_s)
    load_model.first_token(b, now + prefill_s)
    load_model.observe_decode(state, tpot_s)
    load_model.release(b, now + prefill_s)


def _own_ratio(s: InstanceState) -> float:
    assert s.prefill_busy_s.value is not None and s.prefill_work_tokens.value is not None
    return s.prefill_busy_s.value / s.prefill_work_tokens.value


async def _scenario() -> None:
    (m0, m1), (s0, s1) = await sharing_replicas()
    a0, a1 = m0.fleet.states["a"], m1.fleet.states["a"]

    # r0 serves a request on `a`; r1 has served none and starts from r0's estimates.
    await _one_request(a0, m0.now(), 0.1, 0.03)
    await asyncio.sleep(0.2)
    assert a1.prefill_busy_s.value is None  # nothing of its own
    assert a1.prefill_s_per_token.value == pytest.approx(_own_ratio(a0))
    assert a1.decode_s_per_token.value == pytest.approx(0.03)

    # r1 sees a slower prefill and decode of its own: both replicas now decide with one
    # estimate over the two requests, different from what either learnt alone.
    await _one_request(a1, m1.now(), 0.3, 0.05)
    await asyncio.sleep(0.2)
    pooled = (a0.prefill_busy_s.value + a1.prefill_busy_s.value) / (  # type: ignore[operator]
        a0.prefill_work_tokens.value + a1.prefill_work_tokens.value  # type: ignore[operator]
    )
    for s in (a0, a1):
        assert s.prefill_s_per_token.value == pytest.approx(pooled)
        assert s.decode_s_per_token.value == pytest.approx(0.04)
    assert _own_ratio(a0) < pooled < _own_ratio(a1)

    # What a replica publishes is its own estimate, never the pooled one (a peer adding it
    # to its own would count its own requests twice).
    row = own_load(m1.fleet, m1.now())["a"]
    assert row[4:] == pytest.approx([a1.prefill_busy_s.value, a1.prefill_work_tokens.value, 0.05])

    # r0 dies without a word: after the TTL, r1 decides on its own requests again.
    for t in s0._tasks:
        t.cancel()
    await asyncio.sleep(4.0)
    assert a1.prefill_s_per_token.value == pytest.approx(_own_ratio(a1))
    assert a1.decode_s_per_token.value == pytest.approx(0.05)
    await s1.stop()


def test_replicas_decide_with_speeds_learnt_from_every_replicas_requests() -> None:
    run_virtual(_scenario())


def test_a_replica_alone_learns_exactly_as_before() -> None:
    """No peers: the estimates decisions read are this replica's own."""
    m = replica_manager()
    s = m.fleet.states["a"]
    b = load_model.book(s, 2000, 10, 0, 0.0)
    load_model.first_token(b, 0.25)
    load_model.observe_decode(s, 0.02)
    load_model.observe_decode(s, 0.04)
    assert s.prefill_s_per_token.value == pytest.approx(_own_ratio(s))
    assert s.decode_s_per_token.value == pytest.approx(0.02 + 0.2 * (0.04 - 0.02))
