"""Compare routers and policies on one trace window through the real coordinator.

What `sage-cp replay` and the benchmark matrix run. Rules (docs/architecture.md §9):
- One baseline for every comparison: `round_robin` with `fifo`. Router variants run with the
  `fifo` policy, policy variants with the `round_robin` router, so each variant differs from
  the baseline in exactly one decision.
- Every variant replays the same requests (same arrivals, prompts and seeds) against a fresh
  fleet built from the same members, with the same coordinator options.
- Seeds vary the simulated engines, the prompt text and (for lengths-only traces) the Poisson
  arrivals; a `ReplaySetup` may also give each seed its own window of the trace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.plugins.registry import get_registry
from sage_cp_plugin.virtual.capacity import DEFAULT_TOLERANCE, CapacityResult, find_capacity
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RunResult, run_replay
from sage_cp_plugin.virtual.steady import mean_stats, pooled_p90, steady_stats
from sage_cp_plugin.workloads.format import WorkloadRecord
from sage_cp_plugin.workloads.synthetic import mean_rate, poisson_arrivals, with_arrivals

BASELINE_ROUTER = "round_robin"
BASELINE_POLICY = "fifo"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ReplayVariant:
    router: str
    policy: str

    @property
    def name(self) -> str:
        return f"{self.router}+{self.policy}"

    @property
    def compares(self) -> str:
        """Which decision this variant changes against the baseline."""
        if self.router != BASELINE_ROUTER:
            return "router"
        return "policy" if self.policy != BASELINE_POLICY else "baseline"


BASELINE = ReplayVariant(BASELINE_ROUTER, BASELINE_POLICY)


def build_variants(routers: Sequence[str], policies: Sequence[str]) -> list[ReplayVariant]:
    """The baseline first, then each router (with fifo) and each policy (with round_robin)."""
    registry = get_registry()
    for kind, names in (("router", routers), ("policy", policies)):
        known = registry.names(kind)  # type: ignore[arg-type]
        for n in names:
            if n not in known:
                raise ConfigurationError(f"unknown {kind} {n!r}; known: {', '.join(known)}")
    out = [BASELINE]
    out += [ReplayVariant(r, BASELINE_POLICY) for r in dict.fromkeys(routers)]
    out += [ReplayVariant(BASELINE_ROUTER, p) for p in dict.fromkeys(policies)]
    return list(dict.fromkeys(out))


@dataclass
class ReplaySetup:
    """What every variant shares: the requests of each seed, the fleet, the SLOs, the options.

    `windows(seed)` gives the records of a seed (arrivals from 0). With `rate`, timed records
    are time-scaled to that mean rate (burstiness kept) and untimed ones get Poisson arrivals;
    with `time_scale` the trace's gaps are multiplied by it; with neither, arrivals are replayed
    as recorded.
    """

    windows: Callable[[int], list[WorkloadRecord]]
    members: Callable[[int], list[MemberSpec]]
    timed: bool = True
    rate: float | None = None
    time_scale: float | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    coordinator: dict[str, Any] = field(default_factory=dict)  # extra CoordinatorConfig fields
    direct: bool = False  # the direct replay transport (virtual/direct.py)

    def workload(self, seed: int, rate: float | None = None) -> list[WorkloadRecord]:
        records = self.windows(seed)
        rate = rate if rate is not None else self.rate
        if rate is not None:
            if rate <= 0 or not math.isfinite(rate):
                raise ConfigurationError(f"--rate must be a positive number, got {rate}")
            if self.timed and len(records) > 1 and records[-1].arrival_s > records[0].arrival_s:
                k = mean_rate(records) / rate
                records = [r.model_copy(update={"arrival_s": r.arrival_s * k}) for r in records]
            else:
                rng = np.random.default_rng(seed)
                records = with_arrivals(records, poisson_arrivals(rng, rate, len(records)))
        elif self.time_scale is not None:
            if not self.timed:
                raise ConfigurationError(
                    "this trace has no arrival times: give --rate (Poisson arrivals), "
                    "not --time-scale"
                )
            records = [
                r.model_copy(update={"arrival_s": r.arrival_s * self.time_scale}) for r in records
            ]
        elif not self.timed:
            raise ConfigurationError("this trace has no arrival times: give --rate RPS")
        return [self._with_slo(r) for r in records]

    def _with_slo(self, r: WorkloadRecord) -> WorkloadRecord:
        update: dict[str, Any] = {}
        if self.slo_ttft_ms is not None and r.ttft_slo_ms is None:
            update["ttft_slo_ms"] = self.slo_ttft_ms
        if self.slo_tpot_ms is not None and r.tpot_slo_ms is None:
            update["tpot_slo_ms"] = self.slo_tpot_ms
        return r.model_copy(update=update) if update else r

    def native_rate(self, seed: int = 0) -> float:
        """The mean arrival rate the replay would use without a `rate` override."""
        w = self.workload(seed)
        rate = mean_rate(w)
        return rate if math.isfinite(rate) and rate > 0 else 1.0


def run_variant(
    setup: ReplaySetup, variant: ReplayVariant, seed: int, rate: float | None = None
) -> RunResult:
    """One replay of one variant and seed on the virtual clock."""
    config = CoordinatorConfig(router=variant.router, policy=variant.policy, **setup.coordinator)
    fleet = InProcessFleet(setup.members(seed), direct=setup.direct)
    return run_replay(setup.workload(seed, rate), fleet, config, prompt_seed=seed)


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return float(a) / float(b)


def with_baseline_ratios(entries: list[dict[str, Any]]) -> None:
    """Add `vs_baseline` (this / baseline) for the headline figures, in place."""
    base = next((e for e in entries if e["name"] == BASELINE.name), None)
    if base is None:
        return
    for e in entries:
        e["vs_baseline"] = {
            "ttft_ms_p50": _ratio(e["ttft_ms"]["p50"], base["ttft_ms"]["p50"]),
            "ttft_ms_p90": _ratio(e["ttft_ms"]["p90"], base["ttft_ms"]["p90"]),
            "tpot_ms_p90": _ratio(e["tpot_ms"]["p90"], base["tpot_ms"]["p90"]),
            "output_tokens_per_s": _ratio(e["output_tokens_per_s"], base["output_tokens_per_s"]),
            "goodput_rps": _ratio(e["goodput_rps"], base["goodput_rps"]),
        }
        if "capacity_rps" in e and "capacity_rps" in base:
            e["vs_baseline"]["capacity_rps"] = _ratio(e["capacity_rps"], base["capacity_rps"])


def variant_entry(variant: ReplayVariant, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON entry of a variant: identity, seed means, per-seed runs."""
    means = mean_stats(runs)
    return {
        "name": variant.name,
        "router": variant.router,
        "policy": variant.policy,
        "compares": variant.compares,
        "seeds": len(runs),
        **means,
        "runs": runs,
    }


def compare(
    setup: ReplaySetup,
    variants: Sequence[ReplayVariant],
    seeds: Sequence[int],
    progress: Progress = lambda _: None,
) -> list[dict[str, Any]]:
    """Replay every variant for every seed; one entry per variant (means over seeds)."""
    total, k, t0 = len(variants) * len(seeds), 0, time.perf_counter()
    entries = []
    for v in variants:
        runs = []
        for s in seeds:
            r = run_variant(setup, v, s)
            stats = steady_stats(r)
            stats["seed"] = s
            stats["wall_s"] = r.wall_s
            runs.append(stats)
            k += 1
            p90 = stats.get("ttft_ms", {}).get("p90")
            progress(
                f"[{k}/{total}] {v.name} seed {s}: {stats['completed']}/{stats['requests']} "
                f"completed, P90 TTFT {_ms(p90)}, {r.wall_s:.1f}s wall "
                f"({time.perf_counter() - t0:.0f}s elapsed)"
            )
        entries.append(variant_entry(v, runs))
    with_baseline_ratios(entries)
    return entries


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def slo_meets(
    setup: ReplaySetup, variant: ReplayVariant, seeds: Sequence[int]
) -> Callable[[float], bool]:
    """`meets(rate)`: P90 TTFT and P90 TPOT over the steady-state requests of all seeds'
    replays at `rate` are within the SLO (a missing SLO does not constrain), and every request
    completed."""
    if setup.slo_ttft_ms is None and setup.slo_tpot_ms is None:
        raise ConfigurationError("--capacity needs an SLO: give --slo-ttft-ms and/or --slo-tpot-ms")

    def meets(rate: float) -> bool:
        results = [run_variant(setup, variant, s, rate) for s in seeds]
        if any(o.state != "completed" for r in results for o in r.outcomes):
            return False
        for slo, fld in ((setup.slo_ttft_ms, "ttft_ms"), (setup.slo_tpot_ms, "tpot_ms")):
            if slo is None:
                continue
            p90 = pooled_p90(results, fld)
            if p90 is None or p90 > slo:
                return False
        return True

    return meets


def capacity(
    setup: ReplaySetup,
    variant: ReplayVariant,
    seeds: Sequence[int],
    guess: float,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    growth: float = 2.0,
    progress: Progress = lambda _: None,
) -> CapacityResult:
    """Capacity at SLO of one variant (see `capacity.find_capacity`)."""
    meets = slo_meets(setup, variant, seeds)

    def logged(rate: float) -> bool:
        t = time.perf_counter()
        ok = meets(rate)
        progress(
            f"capacity {variant.name}: {rate:.3g} req/s {'meets' if ok else 'misses'} the SLO "
            f"({time.perf_counter() - t:.0f}s)"
        )
        return ok

    return find_capacity(logged, guess, tolerance=tolerance, growth=growth)


def capacity_fields(result: CapacityResult) -> dict[str, Any]:
    lo, hi = result.bracket
    return {
        "capacity_rps": result.capacity_rps,
        "capacity_bracket_rps": [lo, None if math.isinf(hi) else hi],
        "capacity_tolerance": result.tolerance,
        "capacity_probes": [[r, ok] for r, ok in result.probes],
    }
