"""How many interactive requests of an slo_classes cell could meet their TTFT objective under
ANY scheduling: an upper bound, computed from the arrivals alone, without the simulator.

Why: on the bursty Azure code trace the interactive requests alone (batch removed) miss their
objective on the same fleet; a policy that must also serve batch work cannot beat what no
schedule can reach. This bounds what any schedule reaches, batch or not.

The bound (a work argument, valid for every order, placement and preemption):
- a request meets a TTFT objective `d` only if its prefill runs inside [arrival, arrival + d];
- its prefill needs at least `b1 * prompt` seconds of one instance's compute (the simulator's
  step time is `b0 + b1 * prefill tokens + b2 * decoding seqs`; the fixed step cost `b0`, the
  decode work and the prefix cache are left out, all in the bound's favour except the cache:
  see `cached` below), and the fleet has `instances` of them;
- so for any interval [a, b], the requests arriving at or after a with deadline at or before
  b that are met have prefill work summing to at most `instances * (b - a)`: at most the
  largest number of their smallest works that fits; the others miss;
- and a request whose own prefill alone (`b0 + b1 * prompt`) exceeds `d` misses anyway.
Intervals over disjoint sets of requests bound disjoint misses, so the misses of the best
set of disjoint runs of consecutive arrivals (a weighted interval choice, by dynamic
programming) are a lower bound on the misses of any schedule.
`cached`: the prompt share the engines served from their prefix caches in the replay (the
run's `cached_prompt_fraction`) is taken off every prompt's work, so the bound also holds
when the cache is hit at least that much on every request (a request hit less only does
worse). Azure prompts carry no shared prefixes; the share there is about zero.

Not achievable as such: it lets one request's prefill spread over several instances and
leaves out the step granularity (a first token comes at the end of the step that finishes
the prompt, a step the engine fills with other prompts up to its token budget: 8192 tokens
last 147 ms of a 200 ms objective on the simulated H100). `serial_met` is a schedule that
does run: each instance prefills one prompt at a time (its own work plus the fixed step
cost), a request goes to the instance free soonest and is admitted only if it meets its
objective there (else it is set aside, costing nothing); with `revoke`, a request that does
not fit may instead take the place of the longest admitted one not yet started on that
instance when that one is longer (Moore-Hodgson's rule, online). Batch work costs nothing
in it either, so it is what an ideal engine reaches on the interactive traffic alone.

Run: ``python -m benchmarks.slo_interactive_bound [--trace code|conv|mooncake] [--json FILE]``.
Prints one line per seed and load: interactive requests, the most any schedule meets, what
the serial schedule meets (greedy / with revocation), and the replay's measured attainment
for comparison when a result file is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from sage_cp_plugin.sim.presets import DEFAULT_PRESET, get_preset
from sage_cp_plugin.virtual import scenario_slo as S


def most_met(
    arrivals: Sequence[float], work: Sequence[float], alone: Sequence[float], d: float, m: int
) -> int:
    """Upper bound on how many requests (sorted by arrival) meet deadline `d` on `m` servers."""
    n = len(arrivals)
    feasible = [alone[i] <= d for i in range(n)]
    # miss[i][j]: misses forced among requests i..j by the interval [a_i, a_j + d].
    best = [0] * (n + 1)  # best[k]: most forced misses among requests 0..k-1, disjoint runs
    for j in range(n):
        best[j + 1] = best[j]
        ws: list[float] = []
        infeasible = 0
        for i in range(j, -1, -1):
            if feasible[i]:
                ws.append(work[i])
            else:
                infeasible += 1
            cap = m * (arrivals[j] + d - arrivals[i])
            fit, total = 0, 0.0
            for w in sorted(ws):
                if total + w > cap:
                    break
                total += w
                fit += 1
            forced = (j - i + 1) - fit
            if best[i] + forced > best[j + 1]:
                best[j + 1] = best[i] + forced
            if arrivals[j] - arrivals[i] > 5.0:  # runs longer than 5 s add nothing here
                break
    return n - best[n]


def serial_met(
    arrivals: Sequence[float],
    work: Sequence[float],
    b0: float,
    d: float,
    m: int,
    revoke: bool = False,
) -> int:
    """Requests (sorted by arrival) the serial schedule of the module doc meets."""
    # Per instance: admitted requests in start order, [start, end, work, arrival].
    plan: list[list[list[float]]] = [[] for _ in range(m)]
    for a, w in zip(arrivals, work, strict=True):
        k = min(range(m), key=lambda i: max(a, plan[i][-1][1] if plan[i] else 0.0))
        start = max(a, plan[k][-1][1] if plan[k] else 0.0)
        if start + b0 + w <= a + d:
            plan[k].append([start, start + b0 + w, w, a])
            continue
        waiting = [j for j in plan[k] if j[0] > a]
        if not revoke or not waiting:
            continue
        longest = max(waiting, key=lambda j: j[2])
        if longest[2] <= w:
            continue
        begun = [j for j in plan[k] if j[0] <= a]
        t = max(a, begun[-1][1] if begun else 0.0)
        kept = []
        for j in waiting:
            if j is not longest:
                kept.append([t, t + b0 + j[2], j[2], j[3]])
                t += b0 + j[2]
        if t + b0 + w <= a + d and all(j[1] <= j[3] + d for j in kept):
            plan[k] = [*begun, *kept, [t, t + b0 + w, w, a]]
    return sum(1 for jobs in plan for j in jobs if j[1] <= j[3] + d)


def bound_cell(trace: str, seed: int, load: float, cached: float) -> dict[str, Any]:
    cap = S.measured_capacity_rps(trace, seed, S.REQUESTS, S.SLOTS)
    w = S.workload(seed, S.REQUESTS, load * cap, trace)
    inter = [r for r in w if r.slo_class == S.INTERACTIVE_TTFT.name]
    p = get_preset(DEFAULT_PRESET)
    b0, b1 = p.b0_ms / 1000.0, p.b1_us_per_token / 1e6
    arrivals = [r.arrival_s for r in inter]
    work = [b1 * r.prompt_tokens * (1.0 - cached) for r in inter]
    alone = [b0 + x for x in work]
    d = (S.INTERACTIVE_TTFT.ttft_slo_ms or 0.0) / 1000.0
    m = len(S.members(seed))
    met = most_met(arrivals, work, alone, d, m)
    serial = serial_met(arrivals, work, b0, d, m)
    revoking = serial_met(arrivals, work, b0, d, m, revoke=True)
    return {
        "capacity_rps": cap,
        "interactive": len(inter),
        "most_met": met,
        "serial_met": serial,
        "serial_revoke_met": revoking,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    by_label = {v: k for k, v in S.TRACE_LABEL.items()}
    ap.add_argument("--trace", default="code", choices=sorted(by_label))
    ap.add_argument("--json", help="an slo_classes result: its attainments are shown beside")
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args(argv)
    label, trace = a.trace, by_label[a.trace]
    doc = json.loads(Path(a.json).read_text()) if a.json else None
    for seed in range(a.seeds):
        for load in S.LOADS:
            group = f"{label} {load:.0%}"
            cached, seen = 0.0, {}
            if doc is not None:
                for v in doc["variants"]:
                    if v["group"] != group:
                        continue
                    run = next(r for r in v["runs"] if r["seed"] == seed)
                    att = run["groups"]["interactive"]["slo_attainment"]
                    seen[v["label"]] = att
                    cached = max(cached, run.get("cached_prompt_fraction") or 0.0)
            b = bound_cell(trace, seed, load, cached)
            shown = " ".join(f"{k} {x:.3f}" for k, x in seen.items())
            print(
                f"{group} seed {seed}: capacity {b['capacity_rps']:.1f} req/s, "
                f"{b['interactive']} interactive, any schedule meets at most {b['most_met']} "
                f"({b['most_met'] / b['interactive']:.3f}); a serial schedule "
                f"{b['serial_met'] / b['interactive']:.3f} greedy, "
                f"{b['serial_revoke_met'] / b['interactive']:.3f} revoking; "
                f"cached share {cached:.3f}; {shown}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
