"""Why the cost forecast misses on the Azure code trace: how far ahead can ANY forecaster that
sees only the past predict a period's load there? (issue 14, "backtest error below 15 %")

    python benchmarks/forecast_baselines.py

For each bundled Azure trace and period (600 s, 300 s), the last half of the full periods is
held back, as `sage-cp predict` does, and each is forecast from the periods before it only, by:
EWMA (alpha 0.2, 0.5 -- predict's default -- and 0.8), the mean of all past periods, the last
period (naive), and "chosen": at each forecast origin, the one of those with the lowest mean
error on its own rolling backtest over the past periods (no held-back data). The target is the
period's tokens (prompt + output), the load GPU-hours follow once the length mix is fixed
(`sage-cp predict` divides by a capacity measured per period; that needs the simulator and is
not run here). Also reported: the error of the whole held-back span's total ("right on average
over the horizon"), and the trace's per-minute request counts. No constant is fitted.

Writes benchmarks/results/forecast_baselines.{json,md}. Runs in about a second.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_results
from sage_cp_plugin.virtual.forecast import cut_periods, ewma
from sage_cp_plugin.workloads import AZURE_CODE, AZURE_CONV, load_azure

Forecaster = Callable[[Sequence[float]], float]
FORECASTERS: dict[str, Forecaster] = {
    "ewma_0.2": lambda v: ewma(v, 0.2),
    "ewma_0.5": lambda v: ewma(v, 0.5),
    "ewma_0.8": lambda v: ewma(v, 0.8),
    "mean": lambda v: float(np.mean(v)),
    "last": lambda v: float(v[-1]),
}


def _err(forecast: float, actual: float) -> float:
    return abs(forecast - actual) / actual if actual else float("inf")


def chosen(history: Sequence[float]) -> tuple[float, str]:
    """The forecaster with the lowest mean one-step error on `history` alone (rolling origin
    from its second period); EWMA 0.5 when the history is too short to judge."""
    if len(history) < 3:
        return FORECASTERS["ewma_0.5"](history), "ewma_0.5"
    scores = {
        name: float(np.mean([_err(f(history[:k]), history[k]) for k in range(1, len(history))]))
        for name, f in FORECASTERS.items()
    }
    best = min(scores, key=lambda n: scores[n])
    return FORECASTERS[best](history), best


def evaluate(values: list[float]) -> dict[str, Any]:
    n = len(values)
    holdout = max(1, n // 2)
    targets = range(n - holdout, n)
    out: dict[str, Any] = {"values": values, "held_back": list(targets), "forecasters": {}}
    for name, f in {**FORECASTERS, "chosen": None}.items():
        preds, picks = [], []
        for k in targets:
            if f is None:
                p, pick = chosen(values[:k])
                picks.append(pick)
            else:
                p = f(values[:k])
            preds.append(p)
        errs = [_err(p, values[k]) for p, k in zip(preds, targets, strict=True)]
        total = sum(values[k] for k in targets)
        out["forecasters"][name] = {
            "forecasts": preds,
            "errors": errs,
            "mean_error": float(np.mean(errs)),
            "horizon_total_error": _err(sum(preds), total),
            **({"picked": picks} if picks else {}),
        }
    return out


def main() -> None:
    doc: dict[str, Any] = {"traces": {}}
    md = [
        "# Forecast baselines on the bundled Azure traces (tokens per period)",
        "",
        "Each held-back period is forecast from the periods before it only. Error = "
        "|forecast - actual| / actual; horizon = the error of the held-back span's total.",
        "",
        "| trace | period | forecaster | error per held-back period | mean | horizon |",
        "|---|---|---|---|---|---|",
    ]
    for label, name in (("azure_conv", AZURE_CONV), ("azure_code", AZURE_CODE)):
        records = load_azure(name)
        minutes = np.bincount([int(r.arrival_s // 60) for r in records]).tolist()
        doc["traces"][label] = {"requests_per_minute": minutes, "periods": {}}
        for period_s in (600.0, 300.0):
            periods = cut_periods(records, period_s)
            tokens = [float(p.input_tokens + p.output_tokens) for p in periods]
            ev = evaluate(tokens)
            ev["requests"] = [p.requests for p in periods]
            doc["traces"][label]["periods"][f"{period_s:g}"] = ev
            for fname, r in ev["forecasters"].items():
                per = ", ".join(f"{100 * e:.1f}" for e in r["errors"])
                extra = f" (picked {', '.join(r['picked'])})" if "picked" in r else ""
                md.append(
                    f"| {label} | {period_s:g} s | {fname}{extra} | {per} % | "
                    f"{100 * r['mean_error']:.1f} % | {100 * r['horizon_total_error']:.1f} % |"
                )
    md += [""]
    for label, t in doc["traces"].items():
        md.append(f"Requests per minute, {label}: {t['requests_per_minute']}")
        md.append("")
    write_results("forecast_baselines", doc, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
