"""`sage-cp plugins`: every policy, router and parallelism strategy with its distribution."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plugins", help="list registered policies, routers and parallelism strategies"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sage_cp_plugin.plugins import get_registry

    reg = get_registry()
    rows = reg.rows()
    if args.json:
        print(json.dumps({"plugins": rows, "failures": [vars(f) for f in reg.failures]}, indent=2))
        return 0
    widths = {
        k: max([len(k), *(len(r[k]) for r in rows)]) for k in ("kind", "name", "distribution")
    }
    header = f"{'kind':<{widths['kind']}}  {'name':<{widths['name']}}  {'distribution':<{widths['distribution']}}  status"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['kind']:<{widths['kind']}}  {r['name']:<{widths['name']}}  "
            f"{r['distribution']:<{widths['distribution']}}  {r['status']}"
        )
    for f in reg.failures:
        print(f"FAILED  {f}")
    return 0
