"""Run the virtual-clock benchmark scenarios (the same as `sage-cp bench NAME`).

    python benchmarks/virtual_scenarios.py                 # all five, 3 seeds each
    python benchmarks/virtual_scenarios.py slo_classes --seeds 1 --smoke

Results go to benchmarks/results/<scenario>.{json,md,png}; see docs/benchmarks.md.
The traces ship with the package (sage_cp_plugin/workloads/data/); $SAGE_CP_TRACES is searched first.
"""

from __future__ import annotations

import sys

from sage_cp_plugin.entrypoints.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    names = [a for a in args if not a.startswith("-") and not a.isdigit()] or ["all"]
    flags = [a for a in args if a not in names]
    code = 0
    for name in names:
        code |= main(["bench", name, *flags])
    sys.exit(code)
