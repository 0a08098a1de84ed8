"""The benchmark harness: variants x seeds of one scenario, aggregated and reported.

A scenario builds, per seed, the variants it compares (its baseline among them): each a
coordinator configuration, a fleet and a workload. Every variant of a seed replays the same
workload on the virtual clock; the harness aggregates the seeds (mean and standard deviation
with numpy) and hands the result to `report.write_reports` (JSON, Markdown table, PNG plots).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, FleetEvent, RequestOutcome, run_replay
from sage_cp_plugin.virtual.summary import paired_by_path, summarize
from sage_cp_plugin.workloads.format import WorkloadRecord

logger = logging.getLogger(__name__)


@dataclass
class Variant:
    """One configuration under test; `group` separates sub-studies (workload, load level)."""

    label: str
    config: CoordinatorConfig
    members: Sequence[MemberSpec]
    workload: Sequence[WorkloadRecord]
    group: str = ""
    events: Sequence[tuple[float, FleetEvent]] = ()
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    description: str
    build: Callable[[int, bool], list[Variant]]  # (seed, smoke) -> variants
    baseline: str  # label of the baseline variant in each group
    columns: Sequence[str]  # summary keys of the Markdown table ("all.ttft_ms_p90", ...)
    goals: Callable[[dict[str, Any]], list[dict[str, Any]]] = lambda _: []
    plots: Sequence[str] = ()  # summary keys plotted, one panel each
    notes: str = ""


def lookup(summary: dict[str, Any], key: str) -> float:
    """`"all.ttft_ms_p90"` -> summary["all"]["ttft_ms_p90"] (NaN when missing)."""
    node: Any = summary
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return float("nan")
        node = node[part]
    return float(node) if isinstance(node, int | float) else float("nan")


def _flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in summary.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per flattened key: mean, std and the per-seed values."""
    keys = sorted({k for r in runs for k in _flatten(r)})
    flat = [_flatten(r) for r in runs]
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = np.array([f.get(k, np.nan) for f in flat], dtype=float)
        ok = vals[~np.isnan(vals)]
        out[k] = {
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "std": float(ok.std()) if ok.size else float("nan"),
        }
    return out


def _run_seed(scenario: Scenario, seed: int, smoke: bool) -> list[tuple[Variant, dict[str, Any]]]:
    """Every variant of one seed: (variant without its workload, its summary). A variant
    whose requests took PD paths also gets `paired`: those requests against themselves in
    its group's baseline (`summary.paired_by_path`)."""
    out = []
    outcomes: dict[tuple[str, str], list[RequestOutcome]] = {}
    for v in scenario.build(seed, smoke):
        fleet = InProcessFleet(v.members)
        result = run_replay(v.workload, fleet, v.config, events=v.events, prompt_seed=seed)
        s = summarize(result)
        s["seed"] = seed
        v.info = v.info | {
            "policy": v.config.policy,
            "router": v.config.router,
            "instances": len(v.members),
            "requests": len(v.workload),
        }
        logger.warning(
            "%s seed %d %s %s: %.1fs wall, %.0fs virtual, %d/%d completed",
            scenario.name,
            seed,
            v.group,
            v.label,
            result.wall_s,
            result.virtual_s,
            int(s["all"]["completed"]),
            len(v.workload),
        )
        if v.label == scenario.baseline or "paths" in s:  # kept for the pairing only
            outcomes[(v.group, v.label)] = result.outcomes
        out.append((Variant(v.label, v.config, (), (), v.group, info=v.info), s))
    for v, s in out:
        base = outcomes.get((v.group, scenario.baseline))
        if v.label != scenario.baseline and base is not None and "paths" in s:
            s["paired"] = paired_by_path(outcomes[(v.group, v.label)], base)
    return out


# The scenario a forked worker runs (set before the pool forks: scenarios hold lambdas,
# which do not pickle; a seed number does).
_FORKED: tuple[Scenario, bool] | None = None


def _forked_seed(seed: int) -> list[tuple[Variant, dict[str, Any]]]:
    assert _FORKED is not None
    scenario, smoke = _FORKED
    return _run_seed(scenario, seed, smoke)


def run_scenario(
    scenario: Scenario, seeds: Sequence[int], smoke: bool, jobs: int = 1
) -> dict[str, Any]:
    """Run every variant for every seed; returns the JSON-ready result. `jobs > 1` runs
    seeds in parallel processes (fork): the same numbers, since each replay runs on its own
    virtual clock; only the wall time changes."""
    global _FORKED
    started = time.perf_counter()
    seeds = list(seeds)
    if jobs > 1 and len(seeds) > 1:
        _FORKED = (scenario, smoke)
        try:
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=ctx) as pool:
                per_seed = list(pool.map(_forked_seed, seeds))
        finally:
            _FORKED = None
    else:
        per_seed = [_run_seed(scenario, seed, smoke) for seed in seeds]
    per_variant: dict[tuple[str, str], list[dict[str, Any]]] = {}
    infos: dict[tuple[str, str], dict[str, Any]] = {}
    for runs in per_seed:
        for v, s in runs:
            per_variant.setdefault((v.group, v.label), []).append(s)
            infos[(v.group, v.label)] = v.info
    variants = [
        {
            "group": g,
            "label": lbl,
            "info": infos[(g, lbl)],
            "stats": aggregate(runs),
            "runs": runs,
        }
        for (g, lbl), runs in per_variant.items()
    ]
    out: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "notes": scenario.notes,
        "baseline": scenario.baseline,
        "seeds": seeds,
        "smoke": smoke,
        "wall_s": time.perf_counter() - started,
        "variants": variants,
    }
    out["goals"] = scenario.goals(out)
    return out


def mean_of(result: dict[str, Any], group: str, label: str, key: str) -> float:
    """Seed-mean of `key` for one variant of a finished run (NaN when absent)."""
    for v in result["variants"]:
        if v["group"] == group and v["label"] == label:
            stat = v["stats"].get(key)
            return float(stat["mean"]) if stat else float("nan")
    return float("nan")


def goal(name: str, measured: float, target: str, met: bool, unit: str = "") -> dict[str, Any]:
    """One row of a scenario's goal table."""
    shown = "nan" if math.isnan(measured) else f"{measured:.3g}{unit}"
    return {"goal": name, "measured": shown, "target": target, "met": bool(met)}


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")
