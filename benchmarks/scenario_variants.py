"""Run only some variants of a benchmark scenario (by label), on whatever code is importable.

Why: to put a baseline commit's variant beside a branch's run (`merge_variants.py`) without
replaying the variants that do not change: export the baseline (`git archive COMMIT | tar
-x -C DIR`) and run this from there with that directory first on the path:

    cd DIR && PYTHONPATH=DIR python /path/to/scenario_variants.py slo_classes slo_aware \\
        --seeds 3 --jobs 2 --out OUT

Writes OUT/<scenario>.{json,md,png} as `sage-cp bench` does (the goals are left out: they
compare variants that were not run).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sage_cp_plugin.virtual.bench import Variant, run_scenario
from sage_cp_plugin.virtual.report import write_reports
from sage_cp_plugin.virtual.scenarios import get_scenario


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scenario")
    ap.add_argument("labels", help="comma-separated variant labels to run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    scenario = get_scenario(a.scenario)
    keep = set(a.labels.split(","))
    build = scenario.build

    def only(seed: int, smoke: bool) -> list[Variant]:
        return [v for v in build(seed, smoke) if v.label in keep]

    chosen = dataclasses.replace(scenario, build=only, goals=lambda _: [])
    result = run_scenario(chosen, range(a.seeds), False, jobs=a.jobs)
    for path in write_reports(chosen, result, Path(a.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
