"""The fleet table (fleet_table.py) changes no decision.

Decisions read the fleet from arrays that are reread only for the instances written to since
the last decision. These tests compare it with the state-by-state code it stands in for:
the same floats exactly and the same instance chosen on random fleet views while their
states keep changing (every kind of write a coordinator makes, so a missed change notice
would show), and, for every built-in router, the same instance for every request of a
replay through the whole coordinator on the virtual clock, with the table and without it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import sage_cp_plugin.pools as pools_module
from benchmarks.routing_quick import at_load, capacity_rps
from sage_cp_plugin import load_model as lm
from sage_cp_plugin import table_times
from sage_cp_plugin.fleet_table import Candidates, FleetTable, with_rows
from sage_cp_plugin.load_model import Booking
from sage_cp_plugin.routing.kv_aware import kv_room
from sage_cp_plugin.routing.predicted import pick_lowest_ttft
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.state import FleetSnapshot, InstanceState, ScrapedLoad
from sage_cp_plugin.types import ExecutionInstance
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.workloads import AZURE_CODE, load_azure
from tests.helpers import item
from tests.test_decision_cost import random_state, reference_pick


def _change(rng: random.Random, states: list[InstanceState], bookings: list[Booking], now: float):
    """One write of the kinds the coordinator makes between decisions."""
    st = rng.choice(states)
    x = rng.random()
    if x < 0.25:
        bookings.append(lm.book(st, rng.randrange(1, 9000), 50, rng.randrange(0, 3000), now))
    elif x < 0.45 and bookings:
        lm.first_token(rng.choice(bookings), now)
    elif x < 0.6 and bookings:
        lm.release(bookings.pop(rng.randrange(len(bookings))), now)
    elif x < 0.7:
        s = st.scraped
        s.fresh = rng.random() < 0.7
        s.running, s.waiting = float(rng.randrange(0, 20)), float(rng.randrange(0, 20))
        s.ours_at_scrape = rng.randrange(0, 20)
        s.scraped_at = now - rng.uniform(0.0, 3.0)
        s.kv_usage = rng.choice([0.0, 0.5, 0.99, 1.0])
    elif x < 0.75:
        st.scraped = ScrapedLoad(fresh=True, running=5.0, waiting=3.0, scraped_at=now)
    elif x < 0.82:
        st.peer_prefill_tokens = rng.uniform(0, 5000)
        st.peer_seqs = rng.randrange(0, 10)
    elif x < 0.87:
        st.share_speeds(rng.choice(states))  # joins another's speed class
    elif x < 0.93:
        lm.observe_decode(st, rng.uniform(0.005, 0.05))  # a shared estimate moves: no notice
    else:
        st.in_flight = rng.randrange(0, 8)


def test_table_times_and_pick_equal_the_load_model_while_states_change() -> None:
    rng = random.Random(17)
    compared = kv_mixed = 0
    for trial in range(60):
        now = rng.uniform(1.0, 10.0)
        n = rng.randrange(1, 24) if trial % 3 else rng.randrange(24, 80)
        states = [random_state(rng, f"i{k}", rng.randrange(0, 6), now) for k in range(n)]
        if trial % 2:  # one speed class, as the coordinator shares them
            for st in states[1:]:
                st.share_speeds(states[0])
        for st in states:  # some state their KV capacity (kv_aware's room test)
            if rng.random() < 0.6:
                meta = {**st.instance.metadata, "kv_capacity_tokens": rng.randrange(1, 40_000)}
                st.instance = st.instance.model_copy(update={"metadata": meta})
        fleet = FleetSnapshot({s.instance_id: s for s in states})
        table = FleetTable(fleet)
        bookings: list[Booking] = []
        for _ in range(25):
            for _ in range(rng.randrange(0, 5)):
                _change(rng, states, bookings, now)
            now += rng.choice([0.0, 0.001, 0.05, 0.5])
            table.refresh()
            at = sorted(rng.sample(range(n), rng.randrange(1, n + 1)))
            subset = [states[k] for k in at]
            it = item(rng.randrange(0, 1000), prompt="p" * rng.randrange(1, 40_000))
            cached = None
            if rng.random() < 0.6:
                cached = [rng.choice([0, it.input_tokens, rng.randrange(0, 4000)]) for _ in at]
                cached = [min(c, it.input_tokens) for c in cached]
            owns = [it.input_tokens - (c if cached is not None else 0) for c in cached or at]
            rows = np.array([table.row_of[s.instance_id] for s in subset], dtype=np.intp)
            got = table_times.candidate_times(table, rows.tolist(), owns, now)
            assert got == lm.candidate_times(subset, owns, now)
            need = it.input_tokens + rng.randrange(0, 2000)
            room = [kv_room(s, need) for s in subset]
            assert table.kv_room(rows.tolist(), need) == room
            kv_mixed += len(set(room)) > 1
            chosen = pick_lowest_ttft(it, with_rows(subset, rows, table), cached, now)
            assert chosen is reference_pick(it, subset, cached, now)
            compared += 1
    assert compared == 1500
    assert kv_mixed > 100  # both answers of the KV room test were compared


def test_table_routable_and_free_equal_the_state_by_state_answer_while_states_change() -> None:
    from sage_cp_plugin.manager import ControlPlaneManager

    rng = random.Random(23)
    answered = 0
    for _ in range(40):
        m = ControlPlaneManager()
        for k in range(rng.randrange(1, 20)):
            m.register_instance(
                ExecutionInstance(
                    instance_id=f"i{k}",
                    port=8000 + k,
                    model_name=rng.choice(["m", "m", "other"]),
                    max_concurrent_requests=rng.randrange(1, 6),
                )
            )
        d, states = m.dispatcher, list(m.fleet.states.values())
        for _ in range(30):
            for _ in range(rng.randrange(0, 6)):
                st = rng.choice(states)
                x = rng.random()
                if x < 0.4:
                    st.in_flight = rng.randrange(0, 7)
                elif x < 0.55:
                    st.peer_in_flight = rng.randrange(0, 3)
                elif x < 0.7:
                    st.healthy = rng.random() < 0.7
                elif x < 0.85:
                    st.draining = rng.random() < 0.2
                else:
                    st.circuit_open = rng.random() < 0.2
            it = item(0, prompt="w" * 100, model_name=rng.choice(["m", "other", None]))
            routable, free = d.routable_and_free(it)
            answered += isinstance(free, Candidates)
            ref_routable = d.routable(it)
            ref_free = [s for s in ref_routable if d.has_room(s, it)]
            assert [s.instance_id for s in routable] == [s.instance_id for s in ref_routable]
            assert [s.instance_id for s in free] == [s.instance_id for s in ref_free]
            if isinstance(free, Candidates):
                assert [free.table.states[r] for r in free.rows] == list(free)
    assert answered > 600  # the table answered most calls (not the state-by-state fallback)


ROUTERS = ["round_robin", "prefix_aware", "load_balanced", "kv_aware", "locality", "affinity"]


def _replay(router: str, monkeypatch: pytest.MonkeyPatch, table: bool) -> list[tuple]:
    with monkeypatch.context() as mp:
        if not table:
            mp.setattr(pools_module, "FleetTable", lambda fleet: None)
        w = load_azure(AZURE_CODE, limit=250, max_input_tokens=16384)
        w = at_load(w, 1.3 * capacity_rps(w) * 8 / 8)  # a queue forms, instances fill up
        members = [
            MemberSpec(
                SimInstanceConfig(seed=i, num_kv_blocks=2048),
                max_concurrent_requests=12,
                extra={"speed_hint": 0.5 if i % 3 == 0 else 1.0},  # two speed classes
            )
            for i in range(8)
        ]
        res = run_replay(w, InProcessFleet(members), CoordinatorConfig(router=router))
    return [(o.instance_id, o.state, o.ttft_ms, o.e2e_ms) for o in res.outcomes]


@pytest.mark.parametrize("router", ROUTERS)
def test_replay_chooses_the_same_instance_for_every_request_with_and_without_the_table(
    router: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    without = _replay(router, monkeypatch, table=False)
    with_table = _replay(router, monkeypatch, table=True)
    assert all(o[1] == "completed" for o in without)
    assert len({o[0] for o in without}) == 8  # every instance was used
    assert with_table == without
