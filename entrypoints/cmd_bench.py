"""`sage-cp bench SCENARIO`: replay a benchmark scenario on the virtual clock and report.

Writes `<out>/<scenario>.json`, `.md` and `.png` (`<scenario>_smoke.*` with `--smoke`), each
stamped with the commit and whether the tree was dirty. `--out` defaults to `./bench-results`;
the committed results are written only on purpose: `--out benchmarks/results`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.virtual.bench import run_scenario
from sage_cp_plugin.virtual.report import write_reports
from sage_cp_plugin.virtual.scenarios import NAMES, get_scenario


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="run a benchmark scenario through the real coordinator on a virtual clock",
        description=__doc__,
    )
    p.add_argument("scenario", choices=[*NAMES, "all"], help="scenario to run")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1), default 3")
    p.add_argument("--smoke", action="store_true", help="a small, fast run (CI)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds run in parallel processes (same numbers, less wall time), default 1",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="output folder (default ./bench-results; the committed results: benchmarks/results)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        print(f"sage-cp bench: error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    names = list(NAMES) if args.scenario == "all" else [args.scenario]
    for name in names:
        scenario = get_scenario(name)
        try:
            result = run_scenario(scenario, range(args.seeds), args.smoke, args.jobs)
        except ConfigurationError as exc:  # a missing or malformed trace, for example
            print(f"sage-cp bench: error: {exc}", file=sys.stderr)
            return 2
        paths = write_reports(scenario, result, args.out)
        print(paths[1].read_text())
        for g in result["goals"]:
            print(
                ("met   " if g["met"] else "NOT met ") + f"{g['goal']}: {g['measured']}",
                file=sys.stderr,
            )
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
