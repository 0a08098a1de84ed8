"""Per-cell comparison of two `pd_separation` results (e.g. main's and a branch's): goodput
pd_predicted / general (ratio of the seed means, and per seed), the paired TPOT gain of the
split requests (mean over seeds, and per seed), split share, and the whole requests' paired
TPOT change. Markdown on stdout.

    python -m benchmarks.pd_cells_compare OLD.json NEW.json [--old-name main --new-name branch]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

B0_MS = 5.75  # the simulated engine's fixed step cost (SimInstanceConfig().b0_ms)


def _runs(result: dict[str, Any], group: str, label: str) -> list[dict[str, Any]]:
    for v in result["variants"]:
        if v["group"] == group and v["label"] == label:
            return sorted(v["runs"], key=lambda r: r["seed"])
    raise KeyError((group, label))


def cell(result: dict[str, Any], group: str) -> dict[str, Any]:
    gen, pd = _runs(result, group, "general"), _runs(result, group, "pd_predicted")
    g = [r["all"]["goodput_rps"] for r in gen]
    p = [r["all"]["goodput_rps"] for r in pd]
    gains = [r.get("paired", {}).get("split", {}).get("tpot_gain", float("nan")) for r in pd]
    whole = [r.get("paired", {}).get("whole", {}).get("tpot_gain", float("nan")) for r in pd]
    n = [int(r.get("paired", {}).get("split", {}).get("requests", 0)) for r in pd]
    return {
        "goodput": sum(p) / sum(g),
        "per_seed": [a / b for a, b in zip(p, g, strict=True)],
        "gain": sum(gains) / len(gains),
        "gains": gains,
        "n": n,
        "split_share": sum(r["split_share"] for r in pd) / len(pd),
        "whole_change": -sum(whole) / len(whole),
        # The gain if the split requests decoded at the engine's fixed step cost alone.
        "ceiling": sum(
            1 - B0_MS / r["paired"]["split"]["baseline_tpot_ms_mean"]
            for r in pd
            if r.get("paired", {}).get("split")
        )
        / max(1, sum(1 for r in pd if r.get("paired", {}).get("split"))),
        "p90_ttft": sum(r["all"]["ttft_ms_p90"] for r in pd)
        / sum(r["all"]["ttft_ms_p90"] for r in gen),
        "attainment": (
            sum(r["all"]["slo_attainment"] for r in gen) / len(gen),
            sum(r["all"]["slo_attainment"] for r in pd) / len(pd),
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--old-name", default="main")
    ap.add_argument("--new-name", default="branch")
    a = ap.parse_args()
    with open(a.old) as f:
        old = json.load(f)
    with open(a.new) as f:
        new = json.load(f)
    groups = list(dict.fromkeys(v["group"] for v in new["variants"]))
    o, n = a.old_name, a.new_name
    print(
        f"| cell | goodput pd / general, {o} | {n} | {n} per seed | TPOT gain of split "
        f"requests, {o} | {n} (per seed; n split) | split share {o} / {n} | whole requests' "
        f"TPOT change {o} / {n} (+ = slower than general) | SLO attainment general / pd, {n} | ceiling, {n} | P90 TTFT pd / general, {n} |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for grp in groups:
        x, y = cell(old, grp), cell(new, grp)
        seeds = " / ".join(f"{r:.2f}" for r in y["per_seed"])
        gains = " / ".join(f"{100 * r:.0f}" for r in y["gains"])
        ns = "/".join(str(k) for k in y["n"])
        ok_g = "**" if y["goodput"] < 0.95 else ""
        print(
            f"| {grp} | {x['goodput']:.3f}x | {ok_g}{y['goodput']:.3f}x{ok_g} | {seeds} | "
            f"{100 * x['gain']:.1f} % | {100 * y['gain']:.1f} % ({gains}; n {ns}) | "
            f"{x['split_share']:.2f} / {y['split_share']:.2f} | "
            f"{100 * x['whole_change']:+.1f} % / {100 * y['whole_change']:+.1f} % | "
            f"{y['attainment'][0]:.3f} / {y['attainment'][1]:.3f} | {100 * y['ceiling']:.0f} % | "
            f"{y['p90_ttft']:.2f}x |"
        )


if __name__ == "__main__":
    main()
