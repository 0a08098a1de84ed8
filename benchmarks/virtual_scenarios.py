"""Run the virtual-clock benchmark scenarios (the same as `sage-cp bench NAME`).

    python benchmarks/virtual_scenarios.py                 # all five, 3 seeds each
    python benchmarks/virtual_scenarios.py slo_classes --seeds 1 --smoke

Results go to benchmarks/results/<scenario>.{json,md,png}; see docs/benchmarks.md.
The traces ship with the package (sage_cp_plugin/workloads/data/); $SAGE_CP_TRACES is searched first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sage_cp_plugin.entrypoints.cli import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    args = sys.argv[1:]
    names = [a for a in args if not a.startswith("-") and not a.isdigit()] or ["all"]
    flags = [a for a in args if a not in names]
    if "--out" not in flags:  # this script refreshes the committed results
        flags += ["--out", str(RESULTS)]
    code = 0
    for name in names:
        code |= main(["bench", name, *flags])
    sys.exit(code)
