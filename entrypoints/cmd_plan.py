"""`sage-cp plan`: rank TP x PP x DP (x EP) layouts for a model on N GPUs.

Prints a table of the top layouts with their estimates and the `vllm serve` flags of the best
one; `--json` prints the whole plan (every candidate, its flags and its instances).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sage_cp_plugin.errors import ConfigurationError


def register(sub: Any) -> None:
    from sage_cp_plugin.parallelism import GPU_PRESETS, MODEL_PRESETS, TRACE_PRESETS, Objective

    p: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="recommend TP/PP/DP/EP layouts and vllm serve flags",
        description="Rank parallel layouts of MODEL on GPUS x GPU for a workload.",
    )
    p.add_argument("--model", required=True, help=f"preset: {', '.join(MODEL_PRESETS)}")
    p.add_argument("--gpu", required=True, help=f"preset: {', '.join(GPU_PRESETS)}")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs available")
    p.add_argument(
        "--workload",
        default="1024:256",
        help=f"{'|'.join(TRACE_PRESETS)}|PATH.csv|PATH.jsonl|IN:OUT (default 1024:256)",
    )
    p.add_argument(
        "--objective",
        choices=[o.value for o in Objective],
        default=None,
        help="default: goodput when an SLO is given, else throughput",
    )
    p.add_argument("--ttft-ms", type=float, default=None, help="TTFT SLO (ms)")
    p.add_argument("--tpot-ms", type=float, default=None, help="TPOT SLO (ms)")
    p.add_argument("--rate", type=float, default=None, help="target arrival rate (req/s)")
    p.add_argument("--top", type=int, default=5, help="layouts to show (default 5)")
    p.add_argument("--no-pd", action="store_true", help="no prefill/decode disaggregation")
    p.add_argument("--strategy", default="roofline", help="roofline | rule_based | a plugin")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sage_cp_plugin.parallelism import PlanRequest
    from sage_cp_plugin.plugins import get_registry

    try:
        if args.top <= 0:
            raise ConfigurationError(f"--top={args.top} must be > 0")
        request = PlanRequest.build(
            model=args.model,
            gpu=args.gpu,
            gpu_count=args.gpus,
            workload=args.workload,
            objective=args.objective,
            rate_rps=args.rate,
            ttft_slo_ms=args.ttft_ms,
            tpot_slo_ms=args.tpot_ms,
            top_k=args.top,
            allow_disaggregation=not args.no_pd,
        )
        strategy = get_registry().create("parallelism strategy", args.strategy)
        plan = strategy.plan(request)
    except ConfigurationError as exc:
        print(f"sage-cp plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = plan.model_dump(mode="json")
        data["best_execution_instances"] = [
            i.model_dump(mode="json") for i in plan.execution_instances()
        ]
        print(json.dumps(data, indent=2))
        return 0
    print(render_table(plan))
    return 0


def render_table(plan: Any) -> str:
    w = plan.workload
    slo = ", ".join(
        f"{k} {w[k]:g} ms" for k in ("ttft_slo_ms", "tpot_slo_ms") if w.get(k) is not None
    )
    rate = f"{w['rate_rps']:.2f} req/s" if w.get("rate_rps") else "none (latency at idle)"
    lines = [
        f"{plan.model} on {plan.gpu_count} x {plan.gpu} | strategy {plan.strategy} | "
        f"objective {plan.objective}",
        f"workload {w['name']}: mean {w['mean_input_tokens']:.0f} in / "
        f"{w['mean_output_tokens']:.0f} out tokens; target rate {rate}; SLO {slo or 'none'}",
        "",
    ]
    head = (
        f"{'#':>2}  {'layout':<34} {'GPUs':>4} {'TTFT ms':>8} {'p90':>7} {'TPOT ms':>8} "
        f"{'max req/s':>9} {'tok/s/GPU':>9} {'goodput':>8} {'SLO%':>5}  note"
    )
    lines += [head, "-" * len(head)]
    for c in plan.candidates:
        e = c.estimate
        notes = []
        if e.tp_crosses_nodes:
            notes.append("TP crosses nodes")
        if not e.stable:
            notes.append("overloaded at target rate")
        if not c.fits:
            notes.append(f"does not fit: {c.note}")
        lines.append(
            f"{c.rank:>2}  {c.label:<34} {e.gpus:>4} {e.ttft_ms_mean:>8.1f} {e.ttft_ms_p90:>7.1f} "
            f"{e.tpot_ms:>8.2f} {e.max_rate_rps:>9.2f} {e.throughput_tok_s_per_gpu:>9.0f} "
            f"{e.goodput_rps:>8.2f} {100 * e.slo_attainment:>5.0f}  {'; '.join(notes)}"
        )
    lines += ["", f"best layout: {plan.best.label}"]
    for pool in plan.best.pools:
        lines.append(
            f"  {pool.role.value} x{pool.replicas}: {pool.gpus_per_instance} GPU(s) each, "
            f"{pool.weights_gb_per_gpu:.1f} GB weights + {pool.kv_cache_gb_per_gpu:.1f} GB KV "
            "per GPU"
        )
        lines.append(f"    {pool.vllm_commands[0]}")
    lines.append(
        f"(planned in {plan.planning_time_ms:.0f} ms over {plan.layouts_evaluated} layouts; "
        "--json for every candidate's flags and ExecutionInstance definitions)"
    )
    return "\n".join(lines)
