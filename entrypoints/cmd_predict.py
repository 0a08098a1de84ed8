"""`sage-cp predict LOG`: forecast the next period's load, GPU-hours and cost from a request
log, and backtest the forecast on the held-back end of the log (the error is printed).

The model (sage_cp_plugin/virtual/forecast.py): EWMA of the per-period request and token
counts; capacity of each instance of the fleet measured by the simulator on the period's mix
of lengths; GPU-hours = fleet GPUs x requests / fleet capacity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .cmd_replay import DEFAULT_PRESET, _positive
from .output import write_json


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "predict",
        help="forecast next period's load, GPU-hours and cost from a request log; backtest it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", metavar="LOG", help="request log or trace (any `sage-cp replay` format)")
    p.add_argument("--format", choices=("auto", "mooncake", "azure", "jsonl"), default="auto")
    p.add_argument("--fleet", type=Path, metavar="fleet.yaml", help="fleet file (with prices)")
    p.add_argument("--instances", type=int, metavar="N", help="instances (default 8)")
    p.add_argument("--preset", metavar="NAME", help=f"engine preset (default {DEFAULT_PRESET})")
    p.add_argument(
        "--price-per-gpu-hour",
        type=_positive,
        metavar="X",
        help="price of every instance without a fleet file",
    )
    p.add_argument(
        "--period",
        type=_positive,
        default=3600.0,
        metavar="S",
        help="forecast period in seconds (default 3600: the next hour)",
    )
    p.add_argument(
        "--holdout",
        type=int,
        metavar="K",
        help="periods held back for the backtest (default: half of the full periods)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="EWMA weight of the newest period")
    p.add_argument(
        "--sample",
        type=int,
        default=1024,
        metavar="N",
        help="requests per capacity measurement (default 1024; smaller is faster and noisier)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sage_cp_plugin.errors import ConfigurationError

    try:
        doc = _predict(args)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        write_json(args.json, doc)
        print(f"wrote {args.json}", file=sys.stderr)
    print(report(doc))
    return 0


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from sage_cp_plugin.errors import ConfigurationError
    from sage_cp_plugin.virtual.fleet_file import load_fleet, preset_fleet
    from sage_cp_plugin.virtual.forecast import FleetModel, backtest, cut_periods, forecast_next
    from sage_cp_plugin.virtual.provenance import provenance
    from sage_cp_plugin.workloads.traces import read_trace

    if args.fleet is not None and (args.instances is not None or args.preset is not None):
        raise ConfigurationError("give either --fleet or --instances/--preset, not both")
    if not 0 < args.alpha <= 1:
        raise ConfigurationError(f"--alpha must be in (0, 1], got {args.alpha}")
    if args.sample < 20:
        raise ConfigurationError(f"--sample must be at least 20, got {args.sample}")
    if args.fleet is not None:
        members = load_fleet(args.fleet)
    else:
        extra = {}
        if args.price_per_gpu_hour is not None:
            extra["price_per_gpu_hour"] = args.price_per_gpu_hour
        members = preset_fleet(args.instances or 8, args.preset or DEFAULT_PRESET)
        members = [type(m)(m.config, m.max_concurrent_requests, extra=dict(extra)) for m in members]
    trace = read_trace(args.log, format=args.format)
    if not trace.timed:
        raise ConfigurationError(f"{str(trace.path)!r} has no arrival times: nothing to forecast")
    periods = cut_periods(trace.records, args.period)
    span = trace.records[-1].arrival_s - trace.records[0].arrival_s if trace.records else 0.0
    if len(periods) < 2:
        raise ConfigurationError(
            f"{str(trace.path)!r} spans {span:.0f} s: fewer than 2 full periods of "
            f"{args.period:g} s, so there is nothing to learn from and nothing to backtest on; "
            "give a shorter --period"
        )
    holdout = args.holdout if args.holdout is not None else max(1, len(periods) // 2)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    fleet = FleetModel(members, sample=args.sample, progress=progress)
    rows = backtest(periods, fleet, holdout, args.alpha)
    errors = [r["gpu_hours_error"] for r in rows if r["gpu_hours_error"] is not None]
    nxt = forecast_next(periods, fleet, args.alpha, key=len(periods) - 1)
    return {
        "log": str(trace.path),
        "format": trace.format,
        "span_s": span,
        "period_s": args.period,
        "periods": len(periods),
        "holdout": holdout,
        "alpha": args.alpha,
        "fleet": str(args.fleet) if args.fleet else f"{len(members)} x {members[0].config.preset}",
        "fleet_gpus": fleet.gpus,
        "history": [
            {
                "start_s": p.start_s,
                "requests": p.requests,
                "input_tokens": p.input_tokens,
                "output_tokens": p.output_tokens,
            }
            for p in periods
        ],
        "backtest": rows,
        "backtest_gpu_hours_mape": sum(errors) / len(errors) if errors else None,
        "backtest_gpu_hours_max_error": max(errors) if errors else None,
        "backtest_gpu_hours_median_error": float(np.median(errors)) if errors else None,
        "next_period": nxt,
        "environment": provenance(),
    }


def report(doc: dict[str, Any]) -> str:
    lines = [
        f"# Forecast for {doc['log']}",
        "",
        f"Log spans {doc['span_s']:.0f} s: {doc['periods']} full period(s) of "
        f"{doc['period_s']:g} s. Fleet {doc['fleet']} ({doc['fleet_gpus']} GPUs). EWMA "
        f"alpha {doc['alpha']}; the last {doc['holdout']} period(s) are held back and each is "
        "forecast from the periods before it only.",
        "",
        "| period | forecast requests | actual requests | forecast GPU-h | actual GPU-h | error |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["backtest"]:
        err = r["gpu_hours_error"]
        lines.append(
            f"| {r['period']} | {r['forecast_requests']:.0f} | {r['actual_requests']} | "
            f"{r['forecast_gpu_hours']:.4f} | {r['actual_gpu_hours']:.4f} | "
            f"{'-' if err is None else f'{100 * err:.1f} %'} |"
        )
    mape = doc["backtest_gpu_hours_mape"]
    worst = doc["backtest_gpu_hours_max_error"]
    if mape is not None:
        lines += [
            "",
            f"Backtest error of the next period's GPU-hours: mean {100 * mape:.1f} %, "
            f"median {100 * doc['backtest_gpu_hours_median_error']:.1f} %, "
            f"worst {100 * worst:.1f} %.",
        ]
    n = doc["next_period"]
    cost = "-" if n["cost"] is None else f"{n['cost']:.4f}"
    lines += [
        "",
        f"Next period ({doc['period_s']:g} s): {n['requests']:.0f} requests, "
        f"{n['input_tokens']:.0f} prompt + {n['output_tokens']:.0f} output tokens, "
        f"{n['gpu_hours']:.4f} GPU-hours, cost {cost} "
        f"(fleet capacity {n['fleet_capacity_rps']:.2f} req/s on the newest mix).",
    ]
    return "\n".join(lines) + "\n"
