"""What-if: the same trace replayed on candidate fleets (counts, presets, prices, PD pools).

`sage-cp replay TRACE --fleet a.yaml --fleet b.yaml ...` runs every fleet with the same
requests, the same router and policy and the same options (docs/architecture.md §9), and
reports per fleet what an operator weighs against each other:
- `slo_attainment` (steady state, mean over seeds) and, with `--capacity`, capacity at SLO;
- `gpu_hours`: the fleet's GPUs x the time it was needed (first arrival to last finish of the
  replay, on the virtual clock): the GPUs are provisioned for the whole run, busy or not;
- `cost`: hour-priced instances charge `price_per_gpu_hour` x their GPU-hours (rent, busy or
  not); token-priced ones charge the tokens they processed (prompt + output of the requests
  they answered). `metered_cost` is the coordinator's own `PerformanceMetrics.total_cost`
  (hour-priced instances charged only for their busy share), for comparison.
The Pareto front marks the fleets no other fleet beats on both cost and SLO attainment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sage_cp_plugin.sim.presets import PRESETS
from sage_cp_plugin.types import PDSeparationConfig
from sage_cp_plugin.virtual.compare import ReplaySetup, ReplayVariant, capacity, capacity_fields
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RunResult, run_replay
from sage_cp_plugin.virtual.steady import mean_stats, steady_stats

Progress = Callable[[str], None]


@dataclass
class FleetVariant:
    """One candidate fleet: its members per seed and how the coordinator runs on it."""

    name: str
    members: Callable[[int], list[MemberSpec]]
    pd: PDSeparationConfig | None = None
    source: str = ""
    coordinator: dict[str, Any] = field(default_factory=dict)


def fleet_gpus(members: Sequence[MemberSpec]) -> int:
    return sum(PRESETS[m.config.preset].tp for m in members)


def fleet_cost(result: RunResult, members: Sequence[MemberSpec]) -> dict[str, float | None]:
    """GPU-hours and cost of one replay on `members` (see the module docstring)."""
    hours = result.virtual_s / 3600.0
    ids = result.instances
    tokens: dict[str, int] = dict.fromkeys(ids, 0)
    for o in result.outcomes:
        if o.state == "completed" and o.instance_id in tokens:
            tokens[o.instance_id] += o.input_tokens + o.completion_tokens
    gpu_hours = 0.0
    cost = 0.0
    priced = False
    for iid, m in zip(ids, members, strict=True):
        gpus = PRESETS[m.config.preset].tp
        gpu_hours += gpus * hours
        per_hour = m.extra.get("price_per_gpu_hour")
        per_1k = m.extra.get("price_per_1k_tokens")
        if per_1k is not None:
            cost += per_1k * tokens[iid] / 1000.0
            priced = True
        elif per_hour is not None:
            cost += per_hour * gpus * hours
            priced = True
    return {
        "gpu_hours": gpu_hours,
        "cost": cost if priced else None,
        "metered_cost": float(result.metrics.get("total_cost", 0.0)) if priced else None,
    }


def _config(variant: ReplayVariant, fleet: FleetVariant, setup: ReplaySetup) -> dict[str, Any]:
    extra: dict[str, Any] = {**setup.coordinator, **fleet.coordinator}
    if fleet.pd is not None:
        extra |= {"enable_pd_separation": True, "pd_config": fleet.pd}
    return extra


def run_fleet(
    setup: ReplaySetup,
    variant: ReplayVariant,
    fleet: FleetVariant,
    seed: int,
    rate: float | None = None,
) -> tuple[RunResult, list[MemberSpec]]:
    members = fleet.members(seed)
    config = CoordinatorConfig(
        router=variant.router, policy=variant.policy, **_config(variant, fleet, setup)
    )
    target = InProcessFleet(members, direct=setup.direct)
    result = run_replay(setup.workload(seed, rate), target, config, prompt_seed=seed)
    return result, members


def compare_fleets(
    setup: ReplaySetup,
    variant: ReplayVariant,
    fleets: Sequence[FleetVariant],
    seeds: Sequence[int],
    *,
    with_capacity: bool = False,
    progress: Progress = lambda _: None,
) -> list[dict[str, Any]]:
    """One entry per fleet: steady-state figures, GPU-hours and cost (means over seeds)."""
    entries: list[dict[str, Any]] = []
    total, k = len(fleets) * len(seeds), 0
    for fleet in fleets:
        runs = []
        for s in seeds:
            result, members = run_fleet(setup, variant, fleet, s)
            stats = steady_stats(result)
            stats |= fleet_cost(result, members)
            stats["seed"] = s
            stats["virtual_s"] = result.virtual_s
            stats["wall_s"] = result.wall_s
            runs.append(stats)
            k += 1
            att = stats.get("slo_attainment")
            progress(
                f"[{k}/{total}] fleet {fleet.name} seed {s}: {stats['completed']}/"
                f"{stats['requests']} completed, SLO attainment "
                f"{'-' if att is None else f'{100 * att:.1f} %'}, "
                f"{stats['gpu_hours']:.3f} GPU-h, {result.wall_s:.1f}s wall"
            )
        members0 = fleet.members(seeds[0])
        entry = {
            "name": fleet.name,
            "fleet": fleet.source,
            "instances": len(members0),
            "gpus": fleet_gpus(members0),
            "pd": fleet.pd is not None,
            "router": variant.router,
            "policy": variant.policy,
            "seeds": len(runs),
            **mean_stats(runs),
            "runs": runs,
        }
        if all(r["cost"] is None for r in runs):
            entry["cost"] = entry["metered_cost"] = None
        if with_capacity:
            fleet_setup = _fleet_setup(setup, variant, fleet)
            cap = capacity(
                fleet_setup, variant, seeds, setup.rate or setup.native_rate(), progress=progress
            )
            entry |= capacity_fields(cap)
        entries.append(entry)
    mark_pareto(entries)
    return entries


def _fleet_setup(setup: ReplaySetup, variant: ReplayVariant, fleet: FleetVariant) -> ReplaySetup:
    """`setup` with this fleet's members and coordinator options (for the capacity search)."""
    return ReplaySetup(
        windows=setup.windows,
        members=fleet.members,
        timed=setup.timed,
        rate=setup.rate,
        time_scale=setup.time_scale,
        slo_ttft_ms=setup.slo_ttft_ms,
        slo_tpot_ms=setup.slo_tpot_ms,
        coordinator=_config(variant, fleet, setup),
        direct=setup.direct,
    )


def cost_axis(entries: Sequence[dict[str, Any]]) -> str:
    """`cost` when every fleet is priced, else `gpu_hours` (what an unpriced fleet costs)."""
    return "cost" if entries and all(e.get("cost") is not None for e in entries) else "gpu_hours"


def mark_pareto(entries: list[dict[str, Any]]) -> None:
    """`pareto`: True for fleets that no other fleet beats on both cost (lower; GPU-hours when
    unpriced) and SLO attainment (higher), with at least one strictly; None without an SLO."""
    axis = cost_axis(entries)
    for e in entries:
        c, a = e.get(axis), e.get("slo_attainment")
        if c is None or a is None:
            e["pareto"] = None
            continue
        e["pareto"] = not any(
            o is not e
            and o.get(axis) is not None
            and o.get("slo_attainment") is not None
            and o[axis] <= c
            and o["slo_attainment"] >= a
            and (o[axis] < c or o["slo_attainment"] > a)
            for o in entries
        )


def markdown(doc: dict[str, Any]) -> str:
    w = doc.get("workload", {})
    lines = [
        f"# What-if: {w.get('trace', '?')} on {len(doc['fleets'])} fleets",
        "",
        f"Router `{doc['router']}`, policy `{doc['policy']}`, same requests and options on "
        f"every fleet; SLO: TTFT {doc.get('slo_ttft_ms')} ms, TPOT {doc.get('slo_tpot_ms')} ms. "
        "GPU-hours = the fleet's GPUs x first arrival to last finish; cost = hour-priced "
        "instances' rent over that time + token-priced instances' tokens.",
        "",
    ]
    has_cap = any("capacity_rps" in f for f in doc["fleets"])
    head = ["fleet", "instances", "GPUs", "completed", "SLO attainment", "TTFT p90 ms"]
    head += ["TPOT p90 ms", "GPU-hours", "cost", "metered cost", "Pareto"]
    if has_cap:
        head.append("capacity req/s")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in doc["fleets"]:
        att = f.get("slo_attainment")
        cells = [
            f"`{f['name']}`",
            str(f["instances"]),
            str(f["gpus"]),
            _num(f.get("completed"), 0),
            "-" if att is None else f"{100 * att:.1f} %",
            _num(f.get("ttft_ms", {}).get("p90"), 0),
            _num(f.get("tpot_ms", {}).get("p90"), 1),
            _num(f.get("gpu_hours"), 3),
            _num(f.get("cost"), 4),
            _num(f.get("metered_cost"), 4),
            {True: "yes", False: "no", None: "-"}[f.get("pareto")],
        ]
        if has_cap:
            cells.append(_num(f.get("capacity_rps"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v: Any, digits: int) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:.{digits}f}"


def pareto_plot(doc: dict[str, Any], path: Path) -> None:
    """Cost (x) against SLO attainment (y), one point per fleet, the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = cost_axis(doc["fleets"])
    pts = [
        (f[axis], 100 * f["slo_attainment"], f["name"], bool(f.get("pareto")))
        for f in doc["fleets"]
        if f.get(axis) is not None and f.get("slo_attainment") is not None
    ]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for x, y, name, front in pts:
        ax.scatter([x], [y], color="tab:red" if front else "tab:blue", zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    on_front = sorted((x, y) for x, y, _, f in pts if f)
    if len(on_front) > 1:
        xs, ys = np.array(on_front).T
        ax.plot(xs, ys, color="tab:red", linestyle="--", zorder=2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("cost (instances' price unit)" if axis == "cost" else "GPU-hours (unpriced)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(f"what-if: {Path(str(doc.get('workload', {}).get('trace', '?'))).name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
