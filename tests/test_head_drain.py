"""`head_drain`'s keys never promise more tokens ahead than the prediction computes.

`routing.pruned_pick` passes over a candidate whose key is at or above a token threshold
shifted by `now / floor`; the key assumes the head drains no faster than the floor allows
and was set at an earlier decision's time. These tests move time forward in steps small and
large and make the learned prefill speed faster and slower between decisions, and check every
row after each decision: its key passes no threshold above the load model's own tokens ahead
(`load_model.prefill_ahead` without the scrape's share), nor does its fully drained bound.
"""

from __future__ import annotations

import math
import random

import numpy as np

from sage_cp_plugin import load_model as lm
from sage_cp_plugin.fleet_table import FleetTable, with_rows
from sage_cp_plugin.head_drain import MARGIN
from sage_cp_plugin.load_model import Booking
from sage_cp_plugin.routing.pruned_pick import pick_index
from sage_cp_plugin.state import FleetSnapshot
from tests.helpers import item
from tests.test_fleet_table import _change
from tests.test_pruned_pick import _one_class


def test_bounds_hold_as_time_passes_and_the_drain_gets_faster() -> None:
    rng = random.Random(41)
    checked = tighter = 0
    for _ in range(30):
        now = rng.uniform(1.0, 10.0)
        n = rng.randrange(2, 40)
        states = _one_class(rng, n, now, 10_000)
        fleet = FleetSnapshot({s.instance_id: s for s in states})
        table = FleetTable(fleet)
        bookings: list[Booking] = []
        for _ in range(40):
            for _ in range(rng.randrange(0, 4)):
                _change(rng, states, bookings, now)
            for st in states[1:]:
                st.share_speeds(states[0])
            if rng.random() < 0.3:  # the shared prefill speed moves, either way: no notice
                states[0].prefill_s_per_token.add(rng.uniform(1e-6, 3e-4))
            now += rng.choice([0.0, 0.001, 0.01, 0.1, 1.0])
            table.refresh()
            rows = np.arange(n, dtype=np.intp)
            it = item(rng.randrange(0, 1000), prompt="p" * rng.randrange(1, 9000))
            assert pick_index(it, with_rows(states, rows, table), None, now) is not None
            keys = table.drain_keys
            shift = now / keys.floor
            pad = abs(shift) + 1.0
            for k, st in enumerate(states):
                # Tokens ahead as predicted, without a scrape's share (which only adds).
                ahead = max(0.0, st.prefill_tokens_queued - lm._drain_head(st, now))
                exact = ahead + st.peer_prefill_tokens
                above = math.nextafter(exact, math.inf)  # any threshold above it
                assert table.key_col[k] < (above + shift) + MARGIN * (above + pad)
                assert table.least_col[k] <= exact
                # The key proves more than the fully drained bound: it was tested.
                least = table.least_col[k] + 1.0
                tighter += table.key_col[k] >= (least + shift) + MARGIN * (least + pad)
                checked += 1
    assert checked > 10_000
    assert tighter > 300
