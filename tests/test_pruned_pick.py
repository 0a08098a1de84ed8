"""`routing.pruned_pick` chooses what the full scan chooses.

The pruned pick predicts only the candidates whose lower bounds (tokens ahead with the
prefill in progress fully drained, running sequences) leave them a chance to change the scan;
these tests compare its choice with `predicted.lowest_ttft_index` over every candidate's
times (`load_model.candidate_times`, state by state) on random fleets of one speed class and
one chunk size (the fleets it covers) whose states keep changing between decisions: prefills
in progress at every stage, peers' load, scrape corrections, cached prefixes, and decode steps
long next to the spread of TTFTs, so that ties chain and the best moves up and down.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from sage_cp_plugin import load_model as lm
from sage_cp_plugin.fleet_table import FleetTable, with_rows
from sage_cp_plugin.load_model import Booking
from sage_cp_plugin.routing.predicted import candidate_ttfts, lowest_ttft_index
from sage_cp_plugin.routing.pruned_pick import pick_index
from sage_cp_plugin.routing.rotation import rotation_start
from sage_cp_plugin.routing.tie_tolerance import tie_tolerance
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import ExecutionInstance
from tests.helpers import item
from tests.test_decision_cost import random_state
from tests.test_fleet_table import _change


def _one_class(rng: random.Random, n: int, now: float, templates: int) -> list[InstanceState]:
    states = []
    for k in range(n):
        st = random_state(rng, f"i{k}", rng.randrange(0, templates), now)
        # One chunk size and one speed hint: the fleet `pruned_pick` covers. (A new object:
        # `model_copy(update=...)` would keep the derived limits cached on the old one.)
        fields = {**st.instance.model_dump(), "metadata": {}, "speed_hint": 1.0}
        st.instance = ExecutionInstance(**fields)
        states.append(st)
    for st in states[1:]:
        st.share_speeds(states[0])
    return states


@pytest.mark.parametrize("objectives", [False, True])
def test_pruned_pick_equals_the_full_scan_while_states_change(objectives: bool) -> None:
    """With `objectives`, requests carry TTFT and TPOT objectives and both picks widen the
    tie by `tie_tolerance` (from one step up to the TTFT objective)."""
    rng = random.Random(29)
    compared = moved = 0
    for trial in range(80):
        now = rng.uniform(1.0, 10.0)
        n = rng.randrange(1, 30) if trial % 3 else rng.randrange(30, 120)
        states = _one_class(rng, n, now, 3 if trial % 2 else 10_000)
        if trial % 4 == 0:  # decode steps long next to the TTFTs' spread: ties chain
            lm.observe_decode(states[0], rng.uniform(0.2, 1.0))
        fleet = FleetSnapshot({s.instance_id: s for s in states})
        table = FleetTable(fleet)
        bookings: list[Booking] = []
        for _ in range(20):
            for _ in range(rng.randrange(0, 5)):
                _change(rng, states, bookings, now)
            for st in states[1:]:  # `_change` may have given one its own speed estimates
                st.share_speeds(states[0])
            now += rng.choice([0.0, 0.001, 0.05, 0.5])
            table.refresh()
            at = sorted(rng.sample(range(n), rng.randrange(1, n + 1)))
            subset = [states[k] for k in at]
            slo: dict[str, float] = {}
            if objectives:  # TPOT objectives around the learnt step: rho below and above 1
                step = lm.decode_step_s(states[0])
                slo = {"ttft_slo_ms": rng.uniform(0.0, 2000.0), "tpot_slo_ms": 1000 * step}
                slo["tpot_slo_ms"] *= rng.uniform(0.5, 4.0)
            seq = rng.randrange(0, 1000)
            it = item(seq, prompt="p" * rng.randrange(1, 40_000), **slo)
            tie = tie_tolerance if objectives else None
            count = rng.choice([1, 1, 2, 3])  # replicas sharing the rotation (routing.rotation)
            it.replica = (rng.randrange(count), count)
            cached = None
            if rng.random() < 0.5:
                cached = [
                    min(it.input_tokens, rng.choice([0, 0, 0, it.input_tokens, 500])) for _ in at
                ]
            rows = np.array([table.row_of[s.instance_id] for s in subset], dtype=np.intp)
            got = pick_index(it, with_rows(subset, rows, table), cached, now, tie)
            assert got is not None  # one speed class, one chunk size: the pruned path ran
            times = candidate_ttfts(it, subset, cached, now)  # a plain list: state by state
            # The pruned scan is one process's: replicas with peers compare costs with a
            # tolerance and take the plain scan (`predicted._scan` with cost tolerances, tested in
            # test_replica_rotation.py); their rotation is still exercised here.
            times.cost_tols = None
            want = lowest_ttft_index(it, times, tie)
            assert got == want
            compared += 1
            moved += want != rotation_start(it.seq, len(subset), it.replica)
    assert compared == 1600
    assert moved > 400  # the scan left its first candidate often: its tests were exercised


def test_a_tie_chain_that_climbs_then_a_much_better_candidate() -> None:
    """The scan's outcome is not a minimum: ties within a step go to the lower cost and can
    move the best up a step at a time, after which a candidate far below it wins. Candidates
    the pruned pick skips must not change that path."""
    now = 5.0
    states = [InstanceState(instance=_inst(k)) for k in range(6)]
    for st in states[1:]:
        st.share_speeds(states[0])
    step = lm.decode_step_s(states[0])
    pst = lm.prefill_s_per_token(states[0])
    # Tokens ahead rising by less than a step's worth each time, sequences falling: each
    # candidate ties the previous best and costs less, so the best climbs.
    per_step = step / pst
    for k, st in enumerate(states[:4]):
        st.prefill_tokens_queued = int(k * 0.6 * per_step)
        st.decode_seqs = 10 - 3 * k
    states[4].prefill_tokens_queued = 0  # as low as the first: below the climbed best - step
    states[4].decode_seqs = 50
    states[5].prefill_tokens_queued = int(10 * per_step)  # far above every best
    fleet = FleetSnapshot({s.instance_id: s for s in states})
    table = FleetTable(fleet)
    table.refresh()
    rows = np.arange(len(states), dtype=np.intp)
    it = item(0, prompt="p" * 800)  # seq 0: the scan starts at the first candidate
    times = candidate_ttfts(it, states, None, now)
    want = lowest_ttft_index(it, times)
    assert want == 4  # the climb happened, then the much better candidate took it
    assert pick_index(it, with_rows(states, rows, table), None, now) == want


def _inst(k: int) -> ExecutionInstance:
    return ExecutionInstance(instance_id=f"i{k}", port=8000 + k, model_name="m")
