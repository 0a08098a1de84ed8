"""Diagnosis: when a router makes the fleet's copies of shared prefixes, and what they cost.

Issue 10, holdout_s14: prefix_aware lost to round_robin on `shared_system` at 110 % load only
(P90 TTFT 1.77x). This replays one window per router on the virtual clock (the matrix's fleet,
`bench_matrix.make_setup`) and prints, per 0.5 s of virtual time: arrivals, dispatches,
completions, engine steps, decode and prefill tokens, mean engine batch, requests in flight at
the coordinator, coordinator queue length; and per dispatch bin the "cold copies": a request
whose shared prefix (its `prefix_blocks` that occur in more than one request of the window)
goes to an instance that has never been sent that prefix, with whether every instance holding
it had all its slots taken at that moment (the copy was forced by the slot limit).

The engine steps are read by wrapping the simulator's scheduler (diagnostic only; the replay's
decisions are unchanged).

Run: ``python -m benchmarks.prefix_copy_timing TRACE SEED RATE [ROUTERS]``, e.g.
``python -m benchmarks.prefix_copy_timing /tmp/holdout/shared_system.jsonl 1 390.1``.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import Any

import numpy as np

from benchmarks import bench_matrix as bm
from sage_cp_plugin.sim import fast_forward as ff
from sage_cp_plugin.sim import scheduler as schmod
from sage_cp_plugin.virtual.compare import BASELINE, build_variants
from sage_cp_plugin.virtual.steady import steady_interval

WIDTH = 0.5  # seconds of virtual time per bin
# Per scheduler: [time, sequences, prefill tokens, decode sequences, running, steps].
STEPS: dict[int, list[list[float]]] = collections.defaultdict(list)


def _record() -> None:
    schedule, run_length = schmod.StepScheduler.schedule, ff.run_length

    def traced_schedule(self: Any) -> Any:
        out = schedule(self)
        if out[0]:
            t = asyncio.get_event_loop().time()
            STEPS[id(self)].append([t, len(out[0]), out[1], out[2], len(self.running), 1])
        return out

    def traced_run_length(batch: Any, prefill: int, sch: Any, kv: Any) -> int:
        n = run_length(batch, prefill, sch, kv)
        if STEPS[id(sch)]:
            STEPS[id(sch)][-1][5] = n  # a fast-forwarded run: n identical steps
        return n

    schmod.StepScheduler.schedule = traced_schedule  # type: ignore[method-assign]
    ff.run_length = traced_run_length


def _bins(outcomes: list[Any], end: float) -> None:
    done = [o for o in outcomes if o.state == "completed"]
    print("  bin_s  arr  disp compl steps dec_tok pre_tok batch coord_inflight queue")
    for lo in np.arange(0.0, end, WIDTH):
        hi, mid = lo + WIDTH, lo + WIDTH / 2
        steps = dec = pre = run = 0.0
        for rows in STEPS.values():
            for t, _n, p, d, r, k in rows:
                if lo <= t < hi:
                    steps, dec, pre, run = steps + k, dec + d * k, pre + p, run + r * k
        print(
            f"  {lo:5.1f} {sum(lo <= o.arrival_s < hi for o in outcomes):4d}"
            f" {sum(lo <= o.arrival_s + o.queue_ms / 1000 < hi for o in done):5d}"
            f" {sum(lo <= o.finished_s < hi for o in done):5d} {steps:5.0f} {dec:7.0f}"
            f" {pre:7.0f} {run / max(steps, 1):5.1f}"
            f" {sum(o.arrival_s + o.queue_ms / 1000 <= mid < o.finished_s for o in done):9d}"
            f" {sum(o.arrival_s <= mid < o.arrival_s + o.queue_ms / 1000 for o in done):6d}"
        )


def _copies(outcomes: list[Any], records: list[Any], slots: int) -> None:
    done = [o for o in outcomes if o.state == "completed"]
    start = {o.index: o.arrival_s + o.queue_ms / 1000 for o in done}
    done.sort(key=lambda o: start[o.index])
    uses = collections.Counter(h for r in records for h in r.prefix_blocks)
    spans = collections.defaultdict(list)
    for o in done:
        spans[o.instance_id].append((start[o.index], o.finished_s, o.index))

    def inflight(inst: str, t: float, me: int) -> int:
        return sum(1 for a, b, i in spans[inst] if a <= t < b and i != me)

    holders: dict[tuple[int, ...], set[str]] = collections.defaultdict(set)
    per: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for o in done:
        key = tuple(h for h in records[o.index].prefix_blocks if uses[h] > 1)
        if not key:
            continue
        t = start[o.index]
        row = per[int(t // WIDTH)]
        row[0] += 1
        if o.instance_id not in holders[key]:
            row[1] += 1
            row[2] += len(key) * 512  # workloads.format.BLOCK_TOKENS
            have = holders[key]
            if have and min(inflight(h, t, o.index) for h in have) >= slots:
                row[3] += 1
            have.add(o.instance_id)
    print("  bin_s shared_sends cold_copies copy_tokens forced_by_full_holders")
    for k in sorted(per):
        print(f"  {k * WIDTH:5.1f} {per[k][0]:6d} {per[k][1]:6d} {per[k][2]:8d} {per[k][3]:6d}")
    total = [sum(r[i] for r in per.values()) for i in range(4)]
    print(f"  total copies {total[1]} ({total[2]} tokens), forced by full holders {total[3]}")


def main() -> None:
    trace, seed, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    names = (sys.argv[4] if len(sys.argv) > 4 else "round_robin+fifo,prefix_aware+fifo").split(",")
    _record()
    setup, _ = bm.make_setup(trace, 2000, 3, {}, {})
    variants = {v.name: v for v in build_variants(["prefix_aware"], [])}
    variants[BASELINE.name] = BASELINE
    for name in names:
        STEPS.clear()
        r = bm.run_variant(setup, variants[name], seed, rate)
        a, b = steady_interval(r.outcomes)
        mid = [o for o in r.outcomes if a <= o.arrival_s <= b and o.state == "completed"]
        q = np.array([o.queue_ms for o in mid])
        t = np.array([o.ttft_ms for o in mid])
        print(
            f"== {name} seed {seed} rate {rate}: steady [{a:.2f}, {b:.2f}] s, n {len(mid)},"
            f" queue p50/p90 {np.percentile(q, 50):.0f}/{np.percentile(q, 90):.0f} ms,"
            f" engine TTFT p50/p90 {np.percentile(t - q, 50):.0f}/{np.percentile(t - q, 90):.0f}"
            f" ms, P90 TTFT {np.percentile(t, 90):.0f} ms"
        )
        _bins(r.outcomes, b + 2.0)
        _copies(r.outcomes, setup.windows(seed), bm.IN_FLIGHT)


if __name__ == "__main__":
    main()
