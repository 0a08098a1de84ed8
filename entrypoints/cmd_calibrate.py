"""`sage-cp sim calibrate LOG`: fit the simulator's step-time model to a recorded run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "calibrate",
        help="fit the simulator's step-time model (b0, b1, b2, overhead) to a request log",
        description=(
            "Fit b0 (ms per step), b1 (us per prefill token), b2 (us per decoding sequence) "
            "and the API server's time per request (ms) to a request log recorded against "
            "real engines (sage-cp serve --request-log), write them as simulator settings, "
            "and with --check fit on every other request (by arrival), replay the whole log "
            "in the simulator and print the P50/P90 errors of TTFT and E2E of the requests "
            "left out of the fit. See docs/policy-lab.md."
        ),
    )
    p.add_argument("log", type=Path, help="request log folder or file")
    p.add_argument("--out", type=Path, help="write the fitted simulator settings (JSON) here")
    p.add_argument(
        "--check",
        action="store_true",
        help="fit on every other request (by arrival), replay the log, report the errors "
        "of the others",
    )
    p.add_argument("--router", default="round_robin", help="router of the check's replay")
    p.add_argument("--policy", default="fifo", help="policy of the check's replay")
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=64,
        help="coordinator slots per instance in the check (as in the recorded run)",
    )
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="the engines' --max-num-seqs (as in the recorded run)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sage_cp_plugin.errors import ConfigurationError

    try:
        result = calibrate(args)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        fit = result["fit"]
        print(
            f"fitted on {fit['requests']} requests ({fit['equations']} equations, median "
            f"relative residual {fit['median_abs_rel_error']:.1%}): b0={fit['b0_ms']:.3f} ms, "
            f"b1={fit['b1_us_per_token']:.3f} us/token, b2={fit['b2_us_per_seq']:.3f} us/seq, "
            f"request overhead {fit['request_overhead_ms']:.3f} ms"
        )
        for name, c in result.get("check", {}).items():
            if isinstance(c, dict):
                print(
                    f"held-out {name}: recorded P50 {c['recorded_p50']:.1f} P90 "
                    f"{c['recorded_p90']:.1f}; simulated P50 {c['simulated_p50']:.1f} P90 "
                    f"{c['simulated_p90']:.1f}; error P50 {c['p50_error']:+.1%} "
                    f"P90 {c['p90_error']:+.1%}"
                )
        if args.out:
            print(f"wrote {args.out}")
    return 0


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from sage_cp_plugin.recording.calibrate import fit_step_model, split_alternate
    from sage_cp_plugin.recording.importer import read_request_log

    log = read_request_log(args.log)
    fit_on, held_out = split_alternate(log) if args.check else (log, [])
    fit = fit_step_model(fit_on)
    fields: dict[str, Any] = fit.as_sim_fields()
    if args.max_num_seqs is not None:
        fields["max_num_seqs"] = args.max_num_seqs
    result: dict[str, Any] = {
        "log": str(args.log),
        "fit": fit.as_dict(),
        "sim_settings": fields,
        "fitted_on": "alternate requests by arrival" if args.check else "whole log",
    }
    if args.check:
        from sage_cp_plugin.recording.calibration_check import latency_errors, replay_held_out
        from sage_cp_plugin.virtual.runner import CoordinatorConfig

        cfg = CoordinatorConfig(router=args.router, policy=args.policy)
        pairs = replay_held_out(
            log, held_out, fields, cfg, max_concurrent_requests=args.max_concurrent
        )
        result["check"] = latency_errors(pairs)
    if args.out:
        args.out.write_text(json.dumps({**fields, "calibration": result["fit"]}, indent=2) + "\n")
    return result
