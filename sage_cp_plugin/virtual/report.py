"""Benchmark reports: a JSON result, a Markdown table and PNG plots per scenario."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sage_cp_plugin.virtual.bench import Scenario
from sage_cp_plugin.virtual.provenance import provenance, write_stamped


def _fmt(stat: dict[str, float] | None) -> str:
    if not stat or math.isnan(stat["mean"]):
        return "-"
    m, s = stat["mean"], stat["std"]
    digits = 0 if abs(m) >= 100 else 1 if abs(m) >= 10 else 3
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(scenario: Scenario, result: dict[str, Any]) -> str:
    cols = list(scenario.columns)
    lines = [
        f"# {scenario.name}",
        "",
        scenario.description,
        "",
        f"Seeds: {result['seeds']}; baseline: `{scenario.baseline}`; "
        f"wall time of the whole run: {result['wall_s']:.0f} s"
        + (" (smoke run)" if result["smoke"] else ""),
        "",
        "| group | variant | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for v in result["variants"]:
        cells = [_fmt(v["stats"].get(c)) for c in cols]
        lines.append(f"| {v['group']} | {v['label']} | " + " | ".join(cells) + " |")
    if result["goals"]:
        lines += ["", "## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
        for g in result["goals"]:
            lines.append(
                f"| {g['goal']} | {g['measured']} | {g['target']} | {'yes' if g['met'] else 'NO'} |"
            )
    if scenario.notes:
        lines += ["", scenario.notes]
    return "\n".join(lines) + "\n"


def plot(scenario: Scenario, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(scenario.plots or scenario.columns[:4])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.0), squeeze=False)
    groups = list(dict.fromkeys(v["group"] for v in result["variants"]))
    labels = list(dict.fromkeys(v["label"] for v in result["variants"]))
    width = 0.8 / max(1, len(labels))
    for ax, key in zip(axes[0], keys, strict=True):
        for j, lbl in enumerate(labels):
            xs, ys, es = [], [], []
            for i, g in enumerate(groups):
                for v in result["variants"]:
                    if v["group"] == g and v["label"] == lbl and key in v["stats"]:
                        xs.append(i + j * width)
                        ys.append(v["stats"][key]["mean"])
                        es.append(v["stats"][key]["std"])
            ax.bar(xs, ys, width, yerr=es, label=lbl, capsize=2)
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(groups))])
        ax.set_xticklabels([g or "all" for g in groups], rotation=20, fontsize=8)
        ax.set_title(key, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{scenario.name} (mean ± std over seeds {result['seeds']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_reports(scenario: Scenario, result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = scenario.name + ("_smoke" if result["smoke"] else "")
    result.setdefault("provenance", provenance())
    paths = [*write_stamped(out_dir, stem, result, markdown(scenario, result))]
    paths.append(out_dir / f"{stem}.png")
    plot(scenario, result, paths[2])
    return paths
