"""Engine steps of one pd_separation cell: per instance, the prefill tokens it ran over a
time span and the gaps in which it ran nothing, for both variants. What showed that pd lost
code at 110 % by prefill throughput (prefill instances idle while requests waited in the
coordinator's queue), not by its split requests (docs/benchmarks.md, session 12).

    python -m benchmarks.pd_engine_steps --trace code --load 1.1 --seed 1 [--span 0.3:3.3]

Each engine's scheduler is wrapped to record its steps (start time, prefill tokens, decode
sequences); a step's duration is the simulator's own cost model (b0 + b1 * prefill tokens +
b2 * decode sequences). Reading only: the replay's decisions are not changed.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from sage_cp_plugin.sim import engine as sim_engine
from sage_cp_plugin.virtual import scenario_pd as pd
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.runner import run_replay

LABELS = {v: k for k, v in pd.TRACE_LABEL.items()}
Step = tuple[float, int, float, int]  # start (s), instance, duration (s), prefill tokens


def _recording(log: list[Step]) -> Callable[..., None]:
    """A SimEngine.__init__ that also records every step of the engine it builds."""
    init = sim_engine.SimEngine.__init__

    def wrapped(self: Any, config: Any, metrics: Any = None) -> None:
        init(self, config, metrics)
        sch, schedule, idx = self.scheduler, self.scheduler.schedule, config.seed % 10
        b0, b1, b2 = config.b0_ms * 1e-3, config.b1_us_per_token * 1e-6, config.b2_us_per_seq * 1e-6

        def recorded() -> Any:
            batch, prefill, decode = schedule()
            if batch:
                now = asyncio.get_running_loop().time()
                log.append((now, idx, b0 + b1 * prefill + b2 * decode, prefill))
            return batch, prefill, decode

        sch.schedule = recorded

    return wrapped


def run_cell(trace: str, load: float, seed: int, span: tuple[float, float]) -> dict[str, Any]:
    t = LABELS[trace]
    cap = pd.measured_capacity_rps(t, seed, pd.REQUESTS)
    out: dict[str, Any] = {}
    original = sim_engine.SimEngine.__init__
    try:
        for v in pd.cell_variants(t, load, seed, cap):
            log: list[Step] = []
            sim_engine.SimEngine.__init__ = _recording(log)  # type: ignore[method-assign]
            run_replay(v.workload, InProcessFleet(v.members), v.config, prompt_seed=seed)
            out[v.label] = _summary(log, span)
    finally:
        sim_engine.SimEngine.__init__ = original  # type: ignore[method-assign]
    return out


def _summary(log: list[Step], span: tuple[float, float]) -> dict[str, Any]:
    """Per instance, over `span` (seconds from the first step): prefill tokens run, busy
    share, and the gaps longer than 3 ms with no step."""
    t0 = min(s[0] for s in log)
    a, b = span
    per: dict[int, dict[str, Any]] = {}
    ends: dict[int, float] = {}
    for start, idx, dur, prefill in sorted(log):
        s = start - t0
        row = per.setdefault(idx, {"prefill_tokens": 0.0, "busy_s": 0.0, "idle_gaps_ms": []})
        lo, hi = max(s, a), min(s + dur, b)
        if hi > lo:
            row["busy_s"] += hi - lo
            row["prefill_tokens"] += prefill * (hi - lo) / dur
        last = ends.get(idx)
        if last is not None and s - last > 0.003 and a < s < b:
            row["idle_gaps_ms"].append((round(last, 3), round((s - last) * 1000)))
        ends[idx] = s + dur
    for row in per.values():
        row["busy_share"] = round(row.pop("busy_s") / (b - a), 3)
        row["prefill_tokens"] = round(row["prefill_tokens"])
    total = sum(r["prefill_tokens"] for r in per.values())
    return {"prefill_tokens": total, "instances": dict(sorted(per.items()))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="code")
    ap.add_argument("--load", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--span", default="0.3:3.3", help="START:END seconds from the first step")
    args = ap.parse_args()
    a, b = (float(x) for x in args.span.split(":"))
    for name, summary in run_cell(args.trace, args.load, args.seed, (a, b)).items():
        print(name, summary["prefill_tokens"], "prefill tokens")
        for idx, row in summary["instances"].items():
            print(f"  instance {idx}: {row}")


if __name__ == "__main__":
    main()
