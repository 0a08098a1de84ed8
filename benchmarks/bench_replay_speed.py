"""Replay speed: the scale workload (Azure code lengths, Poisson at 8 req/s per instance,
non-streaming upstream, monitoring off, round_robin) through the ASGI and the direct replay
transports. Reports wall time AND CPU time (process_time) per transport, so a run on a busy
machine still says what the replay costs.

    python benchmarks/bench_replay_speed.py                      # 256 instances x 100,000
    python benchmarks/bench_replay_speed.py --instances 64 --requests 4000 --profile prof.txt

Writes benchmarks/results/replay_speed.{json,md} (and a cProfile listing with --profile).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_results
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
from sage_cp_plugin.workloads import (
    AZURE_CODE,
    WorkloadRecord,
    load_azure,
    poisson_arrivals,
    with_arrivals,
)


def workload(instances: int, requests: int) -> tuple[list[WorkloadRecord], list[MemberSpec]]:
    """Azure code lengths sampled with a fixed seed, Poisson arrivals at 8 req/s per instance
    (bursts fill engines: chunked prefill, fast-forwarded decodes), 64 slots per instance."""
    rng = np.random.default_rng(0)
    trace = load_azure(AZURE_CODE, max_input_tokens=8000)
    base = [trace[int(i)] for i in rng.integers(0, len(trace), size=requests)]
    work = with_arrivals(base, poisson_arrivals(rng, 8.0 * instances, requests))
    members = [
        MemberSpec(SimInstanceConfig(seed=i), max_concurrent_requests=64) for i in range(instances)
    ]
    return work, members


def run(instances: int, requests: int, transport: str, profile: Path | None) -> dict[str, Any]:
    work, members = workload(instances, requests)
    fleet = InProcessFleet(members, direct=transport == "direct")
    cfg = CoordinatorConfig(router="round_robin", upstream_streaming=False, enable_monitoring=False)
    prof = cProfile.Profile() if profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    res = run_replay(work, fleet, cfg)
    if prof:
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(60)
        profile.with_suffix(f".{transport}.txt").write_text(out.getvalue())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done = sum(o.state == "completed" for o in res.outcomes)
    return {
        "transport": transport,
        "instances": instances,
        "requests": requests,
        "completed": done,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_request": round(1000 * cpu / requests, 3),
        "virtual_s": round(res.virtual_s, 1),
        "e2e_ms_p50": float(np.median([o.e2e_ms for o in res.outcomes if o.e2e_ms is not None])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--instances", type=int, default=256)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--transports", default="asgi,direct")
    ap.add_argument("--profile", type=Path, default=None, help="write cProfile listings here")
    ap.add_argument("--name", default="replay_speed")
    a = ap.parse_args()
    rows = []
    for t in a.transports.split(","):
        rows.append(run(a.instances, a.requests, t, a.profile))
        print(rows[-1], file=sys.stderr, flush=True)
    md = [
        f"# Replay speed: {a.instances} instances x {a.requests} requests",
        "",
        "| transport | completed | wall s | CPU s | CPU ms/request | P50 E2E ms |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['transport']} | {r['completed']} | {r['wall_s']} | {r['cpu_s']} | "
        f"{r['cpu_ms_per_request']} | {r['e2e_ms_p50']:.1f} |"
        for r in rows
    ]
    md += ["", "Goal (issue 14): 100,000 x 256 in under 60 s of wall time on one core."]
    write_results(a.name, {"rows": rows, "goal_wall_s": 60}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
