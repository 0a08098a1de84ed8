"""A replay computes what it computed before the replay speed work (`tests/replay_golden.py`):
the same instance, state, attempts and tokens for every request, the same engine counters, and
the same queue/TTFT/TPOT/E2E times within 1e-6 ms (float noise only; in practice equal)."""

from __future__ import annotations

import json

import pytest

from tests.replay_golden import CASES, GOLDEN, TIMING_FIELDS, run_case

TOL_MS = 1e-6


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_matches_the_golden_run(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())["cases"][name]
    got = run_case(name)
    assert len(got["requests"]) == len(golden["requests"])
    n_fixed = 4  # instance, state, attempts, completion tokens
    for i, (g, r) in enumerate(zip(golden["requests"], got["requests"], strict=True)):
        assert r[:n_fixed] == g[:n_fixed], (name, i)
        for f, x, y in zip(TIMING_FIELDS, g[n_fixed:], r[n_fixed:], strict=True):
            assert (x is None) == (y is None), (name, i, f)
            if x is not None:
                assert abs(x - y) <= TOL_MS, (name, i, f, x, y)
    assert got["engines"] == golden["engines"]
    assert got["virtual_s"] == pytest.approx(golden["virtual_s"], abs=1e-9)
