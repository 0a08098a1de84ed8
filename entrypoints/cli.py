"""`sage-cp`: one command, a subcommand per concept, each in its own module.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)`` which adds its
subparser and sets ``func`` (returning the exit code) as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

_COMMAND_MODULES = [
    "sage_cp_plugin.entrypoints.cmd_plugins",
    "sage_cp_plugin.entrypoints.cmd_sim",
    "sage_cp_plugin.entrypoints.cmd_plan",
    "sage_cp_plugin.entrypoints.cmd_serve",
    "sage_cp_plugin.entrypoints.cmd_batch",
    "sage_cp_plugin.entrypoints.cmd_bench",
    "sage_cp_plugin.entrypoints.cmd_replay",
    "sage_cp_plugin.entrypoints.cmd_predict",
    "sage_cp_plugin.entrypoints.cmd_ab",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sage-cp",
        description="Control plane for fleets of vLLM servers (sage-cp-plugin).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _COMMAND_MODULES:
        importlib.import_module(mod_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
