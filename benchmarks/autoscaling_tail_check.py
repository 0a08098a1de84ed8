"""What the autoscaler's sizing model predicts against what simulated replicas deliver (issue 15).

For one trace at a steady rate (by default the bench_autoscaling steady shape's rate: the
daily mean for ``--peak-replicas``), every static fleet of ``--replicas`` sizes replays the
same workload on the virtual clock; per fleet size it prints the model's predicted shares of
requests missing TTFT and TPOT (``sizing.general_miss``, no online correction: what static
fleets and the autoscaler's first decision use) next to the measured shares, the
prefix-cache hit share of prompt tokens, and the TPOT misses by output length (the short
answers the tail model is about). This is the measurement behind ``elastic/tail_ratio.py``.

usage: python -m benchmarks.autoscaling_tail_check [--trace mooncake] [--rate R]
       [--replicas 1,2,3] [--duration 900] [--out autoscaling_tail_check]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from benchmarks.bench_autoscaling import make_shape, peak_rate
from benchmarks.common import write_results
from sage_cp_plugin.elastic.evaluation import Setup, _Target, length_mix, step_model
from sage_cp_plugin.elastic.load_shapes import workload
from sage_cp_plugin.elastic.sizing import general_miss
from sage_cp_plugin.elastic.tpot import summarise
from sage_cp_plugin.elastic.ttft import Lengths
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.provenance import provenance, provenance_line
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RunResult, replay
from sage_cp_plugin.workloads.format import WorkloadRecord


async def _static(records: list[WorkloadRecord], n: int, setup: Setup) -> RunResult:
    cfg = SimInstanceConfig(preset=setup.preset, seed=0)
    members = [MemberSpec(cfg.model_copy(update={"seed": i}),
                          max_concurrent_requests=setup.max_concurrent_requests)
               for i in range(n)]  # fmt: skip
    fleet = InProcessFleet(members, direct=True)
    config = CoordinatorConfig(policy="fifo", router="load_balanced", enable_monitoring=True)
    return await replay(records, _Target(fleet, n), config)


def check(trace: str, rate: float, sizes: list[int], duration_s: float,
          setup: Setup) -> list[dict[str, Any]]:  # fmt: skip
    shape = make_shape("steady", rate * 1.6, duration_s)  # steady() at ``rate``
    records = workload(shape, trace, ttft_slo_ms=setup.ttft_slo_ms,
                       tpot_slo_ms=setup.tpot_slo_ms)  # fmt: skip
    isl, osl, icv2, ocv2 = length_mix(records)
    mix = Lengths(isl, osl, icv2, ocv2, summarise([r.input_tokens for r in records]),
                  summarise([r.output_tokens for r in records]))  # fmt: skip
    m, rows = step_model(setup), []
    for n in sizes:
        predicted = general_miss(m, shape.mean, n, mix, ttft_target_s=setup.ttft_slo_ms / 1e3,
                                 tpot_target_s=setup.tpot_slo_ms / 1e3)  # fmt: skip
        res = run_virtual(_static(records, n, setup))
        outs, e = res.outcomes, res.engine
        by_k: dict[int, list[int]] = {}
        for o in outs:
            if o.output_tokens <= 8:
                cell = by_k.setdefault(o.output_tokens, [0, 0])
                cell[0] += 1
                cell[1] += int(o.tpot_ms is not None and o.tpot_ms > setup.tpot_slo_ms)
        rows.append({
            "trace": trace, "rate": shape.mean, "replicas": n, "requests": len(outs),
            "predicted_ttft_miss": predicted.ttft, "predicted_tpot_miss": predicted.tpot,
            "ttft_miss": float(np.mean([o.ttft_ms is not None and o.ttft_ms > setup.ttft_slo_ms
                                        for o in outs])),
            "tpot_miss": float(np.mean([o.tpot_ms is not None and o.tpot_ms > setup.tpot_slo_ms
                                        for o in outs])),
            "prefix_hit_share": e.get("prefix_cache_hits", 0) / max(1, e.get("prefix_cache_queries", 0)),
            "tpot_miss_by_output_tokens": {str(k): v for k, v in sorted(by_k.items())},
        })  # fmt: skip
        print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    short = ", ".join(f"{k}: {v[1]}/{v[0]}" for k, v in r["tpot_miss_by_output_tokens"].items())
    return (f"| {r['trace']} | {r['rate']:.2f} | {r['replicas']} | {r['requests']} | "
            f"{100 * r['predicted_ttft_miss']:.2f} % | {100 * r['ttft_miss']:.2f} % | "
            f"{100 * r['predicted_tpot_miss']:.2f} % | {100 * r['tpot_miss']:.2f} % | "
            f"{100 * r['prefix_hit_share']:.1f} % | {short} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", default="mooncake")
    p.add_argument("--rate", type=float, default=0.0, help="req/s (0: the steady shape's)")
    p.add_argument("--peak-replicas", type=int, default=8)
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--duration", type=float, default=900.0)
    p.add_argument("--out", default="autoscaling_tail_check")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.replicas.split(",") if x]
    if not sizes or min(sizes) < 1 or a.duration <= 0 or a.rate < 0:
        raise SystemExit("--replicas must be positive integers, --duration > 0, --rate >= 0")
    setup = Setup(max_replicas=max(12, 2 * a.peak_replicas))
    rate = a.rate or peak_rate(a.trace, a.peak_replicas, setup) / 1.6
    rows = check(a.trace, rate, sizes, a.duration, setup)
    prov = provenance_line(provenance())
    md = "\n".join([
        "# The sizing model's SLO misses against simulated static fleets",
        "", f"Command: `python -m benchmarks.autoscaling_tail_check {' '.join(sys.argv[1:] if argv is None else argv)}`"
        f" ({a.duration:.0f} s per fleet, preset {setup.preset}, TTFT {setup.ttft_slo_ms:.0f} ms,"
        f" TPOT {setup.tpot_slo_ms:.0f} ms, load_balanced router).", "", prov, "",
        "| trace | req/s | replicas | requests | TTFT miss predicted | measured |"
        " TPOT miss predicted | measured | prefix-cache hits | TPOT misses by output tokens |",
        "|---|---|---|---|---|---|---|---|---|---|", *(_line(r) for r in rows), "",
    ])  # fmt: skip
    write_results(a.out, {"args": vars(a), "rows": rows, "provenance_line": prov}, md)
    print(md)


if __name__ == "__main__":
    main()
