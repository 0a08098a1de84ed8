"""`sage-cp ab report LOG`: per-arm TTFT/TPOT/E2E percentiles, SLO attainment and cost of an
A/B experiment's outcome log, with bootstrap confidence intervals, and which differences to
the control arm are significant (see sage_cp_plugin/experiments/report.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .output import write_json


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ab", help="A/B experiments: report on an experiment's outcome log", description=__doc__
    )
    ab = p.add_subparsers(dest="ab_command", metavar="SUBCOMMAND", required=True)
    r = ab.add_parser("report", help="per-arm figures with bootstrap confidence intervals")
    r.add_argument("log", type=Path, metavar="LOG", help="the experiment's outcome log (JSONL)")
    r.add_argument("--control", metavar="ARM", help="arm the others are compared with (first)")
    r.add_argument("--resamples", type=int, default=2000, metavar="N", help="default 2000")
    r.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    r.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from sage_cp_plugin.errors import ConfigurationError
    from sage_cp_plugin.experiments.report import ab_report, markdown, read_outcomes

    try:
        if args.resamples < 100:
            raise ConfigurationError(f"--resamples must be at least 100, got {args.resamples}")
        doc = ab_report(
            read_outcomes(args.log),
            control=args.control,
            resamples=args.resamples,
            seed=args.seed,
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        write_json(args.json, doc)
    print(markdown(doc))
    return 0
