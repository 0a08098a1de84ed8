"""Per-request diagnosis of one pd_separation cell: which requests meet their objectives in
`general` and miss them in `pd_predicted` (and the reverse), by path and by the kind of
instance they ran on, and which objective they missed.

    python -m benchmarks.pd_cell_diag --trace code --load 1.1 --seed 1 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from sage_cp_plugin.virtual import scenario_pd as pd
from sage_cp_plugin.virtual.fleet import InProcessFleet
from sage_cp_plugin.virtual.runner import RequestOutcome, run_replay
from sage_cp_plugin.virtual.summary import paired_by_path, summarize

LABELS = {v: k for k, v in pd.TRACE_LABEL.items()}


def _miss(o: RequestOutcome) -> str:
    if o.state != "completed":
        return o.error_type or o.state
    parts = []
    if o.ttft_ms is not None and o.ttft_ms > pd.SLO["ttft_slo_ms"]:
        parts.append("ttft")
    if o.tpot_ms is not None and o.tpot_ms > pd.SLO["tpot_slo_ms"]:
        parts.append("tpot")
    return "+".join(parts) or "met"


def run_cell(trace: str, load: float, seed: int) -> dict[str, Any]:
    t = LABELS[trace]
    cap = pd.measured_capacity_rps(t, seed, pd.REQUESTS)
    group = f"{trace} {load:.0%}"
    variants = pd.cell_variants(t, load, seed, cap)
    res = {}
    for v in variants:
        r = run_replay(v.workload, InProcessFleet(v.members), v.config, prompt_seed=seed)
        res[v.label] = r
    g, p = res["general"].outcomes, res["pd_predicted"].outcomes
    sg, sp = summarize(res["general"]), summarize(res["pd_predicted"])
    lost = [(a, b) for a, b in zip(g, p, strict=True) if a.slo_met and not b.slo_met]
    won = [(a, b) for a, b in zip(g, p, strict=True) if b.slo_met and not a.slo_met]

    def kind(o: RequestOutcome) -> str:
        role = pd.PD_POOLS[int(o.instance_id.split("-")[1])] if o.instance_id else "?"
        return f"{o.path}@{role}"

    def desc(pairs: list[tuple[RequestOutcome, RequestOutcome]], side: int) -> dict[str, int]:
        return dict(Counter(f"{kind(pair[1])}:{_miss(pair[side])}" for pair in pairs))

    return {
        "cell": group,
        "capacity_rps": cap,
        "goodput": {"general": sg["all"]["goodput_rps"], "pd": sp["all"]["goodput_rps"]},
        "met": {"general": sum(bool(o.slo_met) for o in g), "pd": sum(bool(o.slo_met) for o in p)},
        "misses_general": dict(Counter(_miss(o) for o in g)),
        "misses_pd": dict(Counter(f"{kind(o)}:{_miss(o)}" for o in p)),
        "lost_in_pd": desc(lost, 1),
        "won_in_pd": desc(won, 0),
        "paired": paired_by_path(p, g),
        "lost_examples": [
            {
                "i": b.index,
                "in": b.input_tokens,
                "out": b.output_tokens,
                "pd": [b.instance_id, b.path, b.ttft_ms, b.tpot_ms],
                "general": [a.instance_id, a.ttft_ms, a.tpot_ms],
            }
            for a, b in lost[:25]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="code")
    ap.add_argument("--load", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    out = run_cell(a.trace, a.load, a.seed)
    text = json.dumps(out, indent=1, default=str)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
