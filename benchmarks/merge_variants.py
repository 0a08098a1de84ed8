"""Put variants of another run of the same scenario beside a result, under a suffix.

Why: a change is judged against the code it replaces in the same table, and a scenario's
variants all come from the code that runs it. Replays on the virtual clock are deterministic
(same code, same numbers), so running the scenario once on each commit and merging the
baseline commit's variants of interest gives the table a single run would give if both
codes could run side by side. The merged variants keep their own runs; the result's
provenance stays the first run's and the other's is recorded beside it.

    python -m benchmarks.merge_variants BRANCH.json MAIN.json --labels slo_aware \\
        --suffix _main --out benchmarks/results --stem slo_classes_s14

Writes STEM.json, STEM.md and STEM.png (the scenario's own report, goals recomputed).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from sage_cp_plugin.virtual.provenance import provenance_line, write_stamped
from sage_cp_plugin.virtual.report import markdown, plot
from sage_cp_plugin.virtual.scenarios import get_scenario


def merge(
    result: dict[str, Any], other: dict[str, Any], labels: set[str], suffix: str
) -> dict[str, Any]:
    """`result` with `other`'s variants labelled in `labels` added (label + `suffix`), each
    right after the last variant of its group."""
    if result["scenario"] != other["scenario"] or result["seeds"] != other["seeds"]:
        raise SystemExit("merge_variants: the two runs differ in scenario or seeds")
    out = copy.deepcopy(result)
    variants: list[dict[str, Any]] = out["variants"]
    for v in other["variants"]:
        if v["label"] not in labels:
            continue
        added = {**copy.deepcopy(v), "label": v["label"] + suffix}
        last = max((i for i, w in enumerate(variants) if w["group"] == v["group"]), default=None)
        variants.insert(len(variants) if last is None else last + 1, added)
    out["merged_from"] = other.get("provenance")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("result")
    ap.add_argument("other")
    ap.add_argument("--labels", required=True, help="comma-separated variant labels to add")
    ap.add_argument("--suffix", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stem", required=True)
    ap.add_argument(
        "--other-commit",
        help="the other run's commit, when it ran outside a git checkout (e.g. `git archive`)",
    )
    a = ap.parse_args(argv)
    result = json.loads(Path(a.result).read_text())
    other = json.loads(Path(a.other).read_text())
    if a.other_commit and other.get("provenance") and not other["provenance"].get("commit"):
        other["provenance"] = {**other["provenance"], "commit": a.other_commit, "dirty": False}
    merged = merge(result, other, set(a.labels.split(",")), a.suffix)
    scenario = get_scenario(merged["scenario"])
    merged["goals"] = scenario.goals(merged)
    text = markdown(scenario, merged)
    if merged.get("merged_from"):
        text += (
            f"\nVariants `*{a.suffix}` come from a run of the same scenario and seeds on other "
            f"code. {provenance_line(merged['merged_from'])}\n"
        )
    out = Path(a.out)
    write_stamped(out, a.stem, merged, text)
    plot(scenario, merged, out / f"{a.stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
