"""Golden replays: per-request decisions and timings of fixed replays, pinned to a file.

The replay's speed work (the simulated engine, the virtual clock, the replay harness) must not
change what a replay computes. `tests/test_replay_golden.py` replays the cases below and
compares every request's instance, state, attempts, tokens and timings, and every simulated
engine's counters, with `tests/fixtures/replay_golden.json`, written by the code before that
work (commit named in the file). Regenerate only for an intended behaviour change:

    python -m tests.replay_golden --write

Each case runs through the direct transport (the replay path), which is reproducible to the
bit (the ASGI path is not: see `tests/test_virtual_direct.py`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_replay_speed import workload as replay_speed_workload
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual import CoordinatorConfig, InProcessFleet, MemberSpec, run_replay
from sage_cp_plugin.workloads import (
    load_mooncake,
    poisson_arrivals,
    with_arrivals,
)

GOLDEN = Path(__file__).parent / "fixtures" / "replay_golden.json"
TIMING_FIELDS = ("queue_ms", "ttft_ms", "tpot_ms", "e2e_ms")


def _scale(requests: int = 800, instances: int = 16) -> tuple[list[Any], list[MemberSpec]]:
    """The replay-speed benchmark's workload, smaller."""
    return replay_speed_workload(instances, requests)


def _pressure() -> tuple[list[Any], list[MemberSpec]]:
    """Shared prefixes on small KV caches: prefix hits, LRU eviction and preemptions."""
    rng = np.random.default_rng(1)
    work = with_arrivals(
        load_mooncake(limit=300, max_input_tokens=4000), poisson_arrivals(rng, 24.0, 300)
    )
    members = [
        MemberSpec(
            SimInstanceConfig(seed=i, num_kv_blocks=400, max_num_seqs=12),
            max_concurrent_requests=24,
        )
        for i in range(4)
    ]
    return work, members


CASES: dict[str, tuple[Any, CoordinatorConfig]] = {
    "scale_round_robin_plain": (
        _scale,
        CoordinatorConfig(router="round_robin", upstream_streaming=False, enable_monitoring=False),
    ),
    "pressure_prefix_aware_streaming": (
        _pressure,
        CoordinatorConfig(router="prefix_aware", upstream_streaming=True),
    ),
    "pressure_load_balanced_plain": (
        _pressure,
        CoordinatorConfig(router="load_balanced", upstream_streaming=False),
    ),
}


def run_case(name: str) -> dict[str, Any]:
    """One case's fingerprint: per-request outcomes and per-engine counters."""
    make, cfg = CASES[name]
    work, members = make()
    fleet = InProcessFleet(members, direct=True)
    res = run_replay(work, fleet, cfg)
    return {
        "requests": [
            [
                o.instance_id,
                o.state,
                o.attempts,
                o.completion_tokens,
                *(getattr(o, f) for f in TIMING_FIELDS),
            ]
            for o in res.outcomes
        ],
        "engines": [asdict(sim.engine.counters) for sim in fleet.sims()],
        "virtual_s": res.virtual_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help=f"(re)write {GOLDEN}")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out = {"commit": commit, "cases": {name: run_case(name) for name in CASES}}
    if args.write:
        GOLDEN.write_text(json.dumps(out, separators=(",", ":")) + "\n")
        print(f"wrote {GOLDEN}")
    else:
        print(json.dumps({k: len(v["requests"]) for k, v in out["cases"].items()}))


if __name__ == "__main__":
    main()
