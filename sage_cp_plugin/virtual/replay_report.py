"""Reports of a replay comparison: a Markdown table and PNG plots (the JSON carries the
code version and machine from `provenance`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sage_cp_plugin.virtual.provenance import provenance_line


def _num(v: Any, digits: int = 0) -> str:
    if not isinstance(v, int | float) or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _x(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:.2f}x"


def markdown(doc: dict[str, Any]) -> str:
    """A table of every variant with its ratios to the baseline."""
    w = doc.get("workload", {})
    env = doc.get("environment", {})
    lines = [
        f"# Replay of {w.get('trace', '?')}",
        "",
        f"Workload: {json.dumps(w)}",
        "",
        f"Fleet: {doc.get('fleet', '?')}. Baseline: `{doc.get('baseline')}` (every ratio is to "
        "it, in the same run). Figures are means over seeds; latency percentiles and throughput "
        "are over the steady state (requests arriving in the middle 80 % of the arrival span).",
        "",
        provenance_line(env),
        "",
    ]
    has_cap = any("capacity_rps" in v for v in doc["variants"])
    head = [
        "variant",
        "compares",
        "completed",
        "failed",
        "TTFT p50 ms",
        "TTFT p90 ms",
        "TTFT p99 ms",
        "TPOT p90 ms",
        "output tok/s",
        "goodput req/s",
        "SLO attainment",
        "cached prompt",
        "P90 TTFT vs base",
        "tok/s vs base",
        "goodput vs base",
        "decision p50 us",
    ]
    if has_cap:
        head += ["capacity req/s", "capacity vs base"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in doc["variants"]:
        r = v.get("vs_baseline", {})
        att = v.get("slo_attainment")
        cells = [
            f"`{v['name']}`",
            v.get("compares", ""),
            _num(v.get("completed")),
            _num(v.get("failed")),
            _num(v["ttft_ms"].get("p50")),
            _num(v["ttft_ms"].get("p90")),
            _num(v["ttft_ms"].get("p99")),
            _num(v["tpot_ms"].get("p90"), 1),
            _num(v.get("output_tokens_per_s")),
            _num(v.get("goodput_rps"), 2),
            "-" if att is None else f"{100 * att:.1f} %",
            f"{100 * v.get('cached_prompt_fraction', 0.0):.1f} %",
            _x(r.get("ttft_ms_p90")),
            _x(r.get("output_tokens_per_s")),
            _x(r.get("goodput_rps")),
            _num(v.get("decision_us_p50"), 1),
        ]
        if has_cap:
            cells += [_num(v.get("capacity_rps"), 2), _x(r.get("capacity_rps"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Decision p50: wall time of the pure decision (`planning.plan_head`) per dispatched "
        "request, median, mean over seeds; meaningful only on a quiet machine.",
    ]
    if has_cap:
        lines += [
            "",
            f"Capacity at SLO: highest rate with P90 TTFT <= {doc.get('slo_ttft_ms')} ms and "
            f"P90 TPOT <= {doc.get('slo_tpot_ms')} ms over the steady-state requests of all "
            "seeds and nothing lost; bracketing then bisection to a relative tolerance of "
            f"{100 * doc.get('capacity_tolerance', 0):.0f} %.",
        ]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Any]] = [
        ("P90 TTFT (ms)", lambda v: v["ttft_ms"].get("p90")),
        ("output tokens/s", lambda v: v.get("output_tokens_per_s")),
        ("goodput (req/s)", lambda v: v.get("goodput_rps")),
    ]
    if any("capacity_rps" in v for v in doc["variants"]):
        panels.append(("capacity at SLO (req/s)", lambda v: v.get("capacity_rps")))
    names = [v["name"] for v in doc["variants"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, get) in zip(axes[0], panels, strict=True):
        ys = [get(v) or 0.0 for v in doc["variants"]]
        colors = ["grey" if n == doc.get("baseline") else "tab:blue" for n in names]
        ax.bar(range(len(names)), ys, color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle(
        f"replay of {doc.get('workload', {}).get('trace', '?')} (baseline grey)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_out_dir(
    doc: dict[str, Any],
    out_dir: Path,
    stem: str = "replay",
    *,
    render: Callable[[dict[str, Any]], str] = markdown,
    draw: Callable[[dict[str, Any], Path], None] = plot,
) -> list[Path]:
    """`stem`.json, .md (`render`) and .png (`draw`) in `out_dir`: a replay's by default,
    the what-if report's with its own renderers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(doc, indent=1) + "\n")
    paths[1].write_text(render(doc))
    draw(doc, paths[2])
    return paths
