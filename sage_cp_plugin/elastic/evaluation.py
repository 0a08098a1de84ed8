"""Autoscaling on the virtual clock: the real coordinator and simulated instances, a fleet
that applies scaling decisions after a cold start, against static and threshold baselines.

Every variant replays the same workload (same arrivals, lengths, SLOs) through
`virtual.runner.replay` on an `InProcessFleet` of ``max_replicas`` simulators of which only
the *billed* ones are registered: a replica asked for is billed from the decision and
routable ``cold_start_s`` later; one retired is drained and unbilled once idle.

Variants: ``autoscaler`` (`elastic/controller.py` + `autoscaler.decide`), ``static_peak``
and ``static_mean`` (sized by the same capacity model for the workload's peak and mean rate
in its configured windows), ``threshold`` (KEDA/HPA on waiting requests per replica:
``desired = ceil(ready * waiting_per_replica / target)``, up at once, down to the maximum
of a 300 s window, HPA's default) with ``Setup.threshold_waiting`` as its target, and
``threshold_<target>`` (``threshold_0.5``): the same loop with that target. One target is
one point of the baseline's trade-off between GPU-hours and attainment; a sweep of targets
gives its whole front, which is what the autoscaler is fairly compared with.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sage_cp_plugin.elastic.autoscaler import AutoscalerConfig, Decision, Role, raw_replicas
from sage_cp_plugin.elastic.capacity import StepModel
from sage_cp_plugin.elastic.controller import AutoscaleController, AutoscalingSettings
from sage_cp_plugin.elastic.load_shapes import Shape, workload
from sage_cp_plugin.elastic.tpot import summarise
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.sim.presets import PRESETS
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RunResult, replay
from sage_cp_plugin.workloads.format import WorkloadRecord


class _Target:
    """A `ReplayTarget` exposing only the first ``initial`` members at start."""

    def __init__(self, fleet: InProcessFleet, initial: int) -> None:
        self.fleet = fleet
        self.initial = initial
        self.mounted = True

    @property
    def instances(self) -> list[Any]:
        return self.fleet.instances[: self.initial]

    def transport_factory(self, instance: Any) -> Any:
        return self.fleet.transport_factory(instance)

    def sims(self) -> list[Any]:
        return self.fleet.sims()

    def kill(self, i: int) -> None:
        self.fleet.kill(i)

    async def aclose(self) -> None:
        await self.fleet.aclose()


@dataclass
class VirtualScaler:
    """Applies replica counts to the in-process fleet: billed at once, routable after the
    cold start; scale-down drains the least busy and unbills it when idle."""

    fleet: InProcessFleet
    cold_start_s: float
    manager: ControlPlaneManager | None = None
    booting: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    draining: set[int] = field(default_factory=set)
    actions: list[tuple[float, int]] = field(default_factory=list)  # (time, billed after)
    billed_log: list[tuple[float, int]] = field(default_factory=list)
    name: str = "virtual"

    def registered(self) -> list[int]:
        assert self.manager is not None
        return [self.fleet.index_of(i) for i in self.manager.fleet.states]

    def active(self) -> list[int]:
        assert self.manager is not None
        return [self.fleet.index_of(i) for i, s in self.manager.fleet.states.items()
                if not s.draining]  # fmt: skip

    def billed(self) -> int:
        return len(self.registered()) + len(self.booting)

    def _log(self) -> None:
        loop = asyncio.get_running_loop()
        self.billed_log.append((loop.time(), self.billed()))

    def set_replicas(self, n: int) -> None:
        assert self.manager is not None
        loop, m = asyncio.get_running_loop(), self.manager
        have = len(self.active()) + len(self.booting)
        if n == have:
            return
        if n > have:
            used = set(self.registered()) | set(self.booting)
            free = [i for i in range(len(self.fleet)) if i not in used]
            for i in free[: n - have]:
                self.booting[i] = loop.call_later(self.cold_start_s, self._ready, i)
        else:
            cut = have - n
            for i in sorted(self.booting, reverse=True)[:cut]:  # cold ones first
                self.booting.pop(i).cancel()
                cut -= 1
            victims = sorted(self.active(), key=lambda i: m.fleet.states[
                self.fleet.instances[i].instance_id].in_flight)[:cut]  # fmt: skip
            for i in victims:
                m.drain_instance(self.fleet.instances[i].instance_id)
                self.draining.add(i)
        self.actions.append((loop.time(), n))
        self._log()

    def _ready(self, i: int) -> None:
        assert self.manager is not None
        self.booting.pop(i, None)
        instance = self.fleet.instances[i]
        # A replica retired earlier was drained (is_available=False on this same object):
        # started anew it must join routable, not drained (it was billed, never served,
        # and reaped as idle: a wasted cold start and action in every scaled variant).
        instance.is_available = True
        self.manager.register_instance(instance)
        self._log()

    async def reap(self) -> None:
        assert self.manager is not None
        for i in list(self.draining):
            iid = self.fleet.instances[i].instance_id
            st = self.manager.fleet.states.get(iid)
            if st is None or st.in_flight == 0:
                self.draining.discard(i)
                if st is not None:
                    await self.manager.unregister_instance(iid)
                self._log()

    # -- the Actuator protocol, for the autoscaler variant --------------------------------------
    async def apply(self, model: str, decision: Decision, decision_id: str) -> None:
        self.set_replicas(decision.desired["general"])

    def target(self, model: str) -> dict[Role, int] | None:
        return {"general": len(self.active()) + len(self.booting)}


def gpu_hours(log: Sequence[tuple[float, int]], end: float, gpus_per_replica: int) -> float:
    total = 0.0
    for (t0, n), (t1, _) in zip(log, [*log[1:], (end, 0)], strict=True):
        total += n * max(0.0, min(t1, end) - t0)
    return total * gpus_per_replica / 3600.0


@dataclass(frozen=True)
class Setup:
    preset: str = "llama-3.3-70b-h100-tp4"
    max_replicas: int = 12
    max_concurrent_requests: int = 64
    ttft_slo_ms: float = 3000.0
    tpot_slo_ms: float = 100.0
    utilisation: float = 0.8
    threshold_waiting: float = 4.0  # KEDA target: waiting requests per replica
    threshold_interval_s: float = 15.0


def step_model(setup: Setup) -> StepModel:
    """The preset's coefficients; a replica runs at most ``max_concurrent_requests`` requests
    (the coordinator's per-instance limit is below the engine's ``max_num_seqs``)."""
    p = PRESETS[setup.preset]
    return StepModel.from_sim(p.b0_ms, p.b1_us_per_token, p.b2_us_per_seq,
                              min(p.max_num_seqs, setup.max_concurrent_requests))  # fmt: skip


def scaler_config(setup: Setup, cold_start_s: float) -> AutoscalerConfig:
    """The autoscaler's targets: the workload's SLOs; everything else at its defaults."""
    return AutoscalerConfig(tpot_target_s=setup.tpot_slo_ms / 1e3,
                            ttft_target_s=setup.ttft_slo_ms / 1e3, utilisation=setup.utilisation,
                            cold_start_s=cold_start_s, max_replicas=setup.max_replicas)  # fmt: skip


def length_mix(records: Sequence[WorkloadRecord]) -> tuple[float, float, float, float]:
    """Mean prompt and output tokens and their squared coefficients of variation."""
    i = np.array([r.input_tokens for r in records], dtype=float)
    o = np.array([r.output_tokens for r in records], dtype=float)
    return float(i.mean()), float(o.mean()), float(i.var() / i.mean() ** 2), float(
        o.var() / o.mean() ** 2)  # fmt: skip


def replicas_for(rate: float, records: Sequence[WorkloadRecord], setup: Setup) -> int:
    """Replicas the autoscaler's own planner (``raw_replicas``: TTFT and TPOT tails over the
    workload's length quantiles, no correction) gives ``rate``: the static fleets are sized
    by the same rule, so they differ from the autoscaler only in when replicas run."""
    isl, osl, icv2, ocv2 = length_mix(records)
    need = raw_replicas(scaler_config(setup, 0.0), step_model(setup), rate, isl, osl, 1.0, 1.0,
                        prompt_cv2=icv2, output_cv2=ocv2,
                        prompts=summarise([r.input_tokens for r in records]),
                        outputs=summarise([r.output_tokens for r in records]))  # fmt: skip
    return max(1, need["general"])


def ideal_gpu_hours(shape: Shape, records: Sequence[WorkloadRecord], setup: Setup,
                    step_s: float = 60.0) -> float:  # fmt: skip
    """GPU-hours of a clairvoyant fleet that has, every ``step_s``, exactly the replicas the
    same planner gives that minute's rate (no cold start, no stabilisation): the most any
    autoscaler sized by this planner could save; reported next to what it did save."""
    grid = np.arange(0.0, shape.duration_s, step_s)
    cache: dict[float, int] = {}
    total = 0.0
    for t in grid:
        end = min(t + step_s, shape.duration_s)
        r = round(max(shape.rate(u) for u in np.linspace(t, end - 1e-9, 7)), 3)
        if r not in cache:
            cache[r] = replicas_for(r, records, setup)
        total += cache[r] * min(step_s, shape.duration_s - t)
    return total * PRESETS[setup.preset].tp / 3600.0


def threshold_target(variant: str) -> float:
    """The KEDA target (waiting requests per replica) of a ``threshold_<target>`` variant."""
    try:
        target = float(variant.removeprefix("threshold_"))
    except ValueError:
        raise ValueError(f"{variant!r} is not threshold_<target>") from None
    if not target > 0:  # also rejects nan
        raise ValueError(f"{variant!r}: the target must be > 0")
    return target


async def _threshold_loop(s: VirtualScaler, setup: Setup) -> None:
    assert s.manager is not None
    history: list[tuple[float, int]] = []
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(setup.threshold_interval_s)
        m = s.manager
        ready = max(len(s.active()), 1)
        waiting = len(m.queue) + sum(st.scraped.waiting for st in m.fleet.states.values())
        want = max(1, math.ceil(ready * (waiting / ready) / setup.threshold_waiting))
        want = min(want, setup.max_replicas)
        now = loop.time()
        history = [(t, n) for t, n in history if t >= now - 300.0] + [(now, want)]
        have = len(s.active()) + len(s.booting)
        target = want if want > have else max(n for _, n in history)
        s.set_replicas(min(target, setup.max_replicas))
        await s.reap()


async def _reap_loop(s: VirtualScaler) -> None:
    while True:
        await asyncio.sleep(1.0)
        await s.reap()


async def run_variant(variant: str, records: list[WorkloadRecord], shape: Shape, setup: Setup,
                      cold_start_s: float) -> dict[str, Any]:  # fmt: skip
    cfg = SimInstanceConfig(preset=setup.preset, seed=0)
    members = [MemberSpec(cfg.model_copy(update={"seed": i}),
                          max_concurrent_requests=setup.max_concurrent_requests)
               for i in range(setup.max_replicas)]  # fmt: skip
    fleet = InProcessFleet(members, direct=True)  # same decisions, less framing (tested)
    peak_n, mean_n = (
        replicas_for(shape.peak, records, setup),
        replicas_for(shape.mean, records, setup),
    )
    fixed = {"static_peak": peak_n, "static_mean": mean_n}
    if variant.startswith("static_") and variant[7:].isdigit():  # static_N: N replicas
        fixed[variant] = int(variant[7:])
    initial = fixed.get(variant, replicas_for(shape.rate(0.0), records, setup))
    if variant.startswith("threshold_"):
        setup = replace(setup, threshold_waiting=threshold_target(variant))
    scaler = VirtualScaler(fleet, cold_start_s)
    tasks: list[asyncio.Task[Any]] = []
    controller: list[AutoscaleController] = []

    def begin(_target: Any, manager: ControlPlaneManager) -> None:
        scaler.manager = manager
        scaler._log()
        if variant == "autoscaler":
            settings = AutoscalingSettings(
                model="", actuator="virtual", step_model=step_model(setup),
                scaler=scaler_config(setup, cold_start_s))  # fmt: skip
            c = AutoscaleController(settings, scaler, fleet=manager.fleet, metrics=manager.metrics,
                                    queue=manager.queue, clock=manager.now)  # fmt: skip
            controller.append(c)
            tasks.append(asyncio.create_task(c.run()))
            tasks.append(asyncio.create_task(_reap_loop(scaler)))
        elif variant.startswith("threshold"):
            tasks.append(asyncio.create_task(_threshold_loop(scaler, setup)))

    config = CoordinatorConfig(policy="fifo", router="load_balanced", enable_monitoring=True)
    try:
        result: RunResult = await replay(records, _Target(fleet, initial), config,
                                         events=[(0.0, begin)])  # fmt: skip
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    end = shape.duration_s
    outs = result.outcomes
    met = [o.slo_met is True for o in outs]
    return {
        "variant": variant,
        "cold_start_s": cold_start_s,
        "requests": len(outs),
        "slo_attainment": float(np.mean(met)) if met else 0.0,
        "failed": sum(o.state != "completed" for o in outs),
        # Which SLO the misses broke (a request may break both).
        "ttft_missed": _share(
            outs, lambda o: o.ttft_ms is not None and o.ttft_ms > setup.ttft_slo_ms
        ),
        "tpot_missed": _share(
            outs, lambda o: o.tpot_ms is not None and o.tpot_ms > setup.tpot_slo_ms
        ),
        "gpu_hours": gpu_hours(scaler.billed_log, end, PRESETS[setup.preset].tp),
        "actions": len(scaler.actions),
        "actions_per_hour": len(scaler.actions) / (end / 3600.0),
        "replicas_peak_sized": peak_n,
        "replicas_mean_sized": mean_n,
        "recovery_s": recovery_s(outs, shape),
        "billed": scaler.billed_log,
        "wall_s": result.wall_s,
    }


def _share(outcomes: Sequence[Any], pred: Callable[[Any], bool]) -> float:
    return float(np.mean([pred(o) for o in outcomes])) if outcomes else 0.0


def recovery_s(outcomes: Sequence[Any], shape: Shape, bucket_s: float = 30.0,
               target: float = 0.9) -> float | None:  # fmt: skip
    """After the largest load step (the first moment the rate exceeds 1.5x its start), how long
    until a 30 s bucket of arrivals meets the SLO at ``target`` again (None: never missed)."""
    grid = np.arange(0.0, shape.duration_s, bucket_s)
    rates = np.array([shape.rate(t) for t in grid])
    step = next((t for t, r in zip(grid, rates, strict=True) if r > 1.5 * rates[0]), None)
    if step is None:
        return None
    buckets: dict[int, list[bool]] = {}
    for o in outcomes:
        if o.arrival_s >= step:
            buckets.setdefault(int((o.arrival_s - step) // bucket_s), []).append(o.slo_met is True)
    missed = False
    for k in sorted(buckets):
        ok = float(np.mean(buckets[k])) >= target
        if not ok:
            missed = True
        elif missed:
            return k * bucket_s
    return None if not missed else shape.duration_s - step


def evaluate(shape: Shape, trace: str, setup: Setup, cold_starts: Sequence[float],
             variants: Sequence[str] = ("autoscaler", "static_peak", "static_mean", "threshold"),
             seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    records = workload(shape, trace, ttft_slo_ms=setup.ttft_slo_ms, tpot_slo_ms=setup.tpot_slo_ms,
                       seed=seed)  # fmt: skip
    rows = []
    for cs in cold_starts:
        for v in variants:
            if v.startswith("static") and cs != cold_starts[0]:
                continue  # a static fleet never starts a replica: one run is enough
            row = run_virtual(run_variant(v, records, shape, setup, cs))
            row.update({"workload": shape.name, "trace": trace})
            rows.append(row)
    return rows
