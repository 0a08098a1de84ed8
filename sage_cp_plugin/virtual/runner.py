"""Replay a workload through the real coordinator against an in-process simulated fleet.

`replay(...)` is a coroutine for any event loop; `run_replay(...)` runs it on a fresh
`VirtualClockEventLoop`, so a trace hours long replays in the wall time its events cost.
Nothing here re-implements scheduling: requests go through `ControlPlaneManager.submit_request`
exactly as an application's would, and the outcome of each is read from its `RequestResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage_cp_plugin.errors import RequestRejectedError, RetryLaterError
from sage_cp_plugin.health import HealthConfig
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.types import PDSeparationConfig, RequestMetadata
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.virtual.decision_cost import DecisionCostProbe
from sage_cp_plugin.virtual.target import ReplayTarget, engine_totals
from sage_cp_plugin.workloads.format import WorkloadRecord
from sage_cp_plugin.workloads.prompts import PromptBuilder

FleetEvent = Callable[[ReplayTarget, ControlPlaneManager], None]


@dataclass
class CoordinatorConfig:
    """How the coordinator under test is configured (the knobs scenarios compare)."""

    policy: str = "fifo"
    router: str = "load_balanced"
    policy_options: dict[str, Any] = field(default_factory=dict)
    router_options: dict[str, Any] = field(default_factory=dict)
    enable_pd_separation: bool = False
    pd_config: PDSeparationConfig | None = None
    upstream_streaming: bool = True
    enable_monitoring: bool = True
    health: HealthConfig | None = None
    max_pending_requests: int = 1_000_000
    request_timeout_s: float = 3600.0
    extra: dict[str, Any] = field(default_factory=dict)  # other ControlPlaneManager kwargs

    def build(self, fleet: ReplayTarget, n_requests: int) -> ControlPlaneManager:
        manager = ControlPlaneManager(
            scheduling_policy=self.policy,
            routing_strategy=self.router,
            enable_pd_separation=self.enable_pd_separation,
            enable_monitoring=self.enable_monitoring,
            pd_config=self.pd_config,
            policy_options=self.policy_options,
            router_options=self.router_options,
            max_pending_requests=self.max_pending_requests,
            request_timeout_s=self.request_timeout_s,
            health=self.health,
            transport_factory=fleet.transport_factory if fleet.mounted else None,
            upstream_streaming=self.upstream_streaming,
            result_retention=max(100_000, n_requests),
            **self.extra,
        )
        for inst in fleet.instances:
            manager.register_instance(inst)
        attach = getattr(fleet, "attach_kv_events", None)
        if attach is not None:  # an in-process fleet: its events feed the index directly
            attach(manager.kv_events)
        return manager


@dataclass(slots=True)
class RequestOutcome:
    """One replayed request: what it was and what happened to it (times in ms)."""

    index: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    slo_class: str | None
    tenant: str | None
    priority: int
    has_slo: bool
    state: str
    error_type: str | None = None
    instance_id: str | None = None
    completion_tokens: int = 0
    queue_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    finished_s: float | None = None
    slo_met: bool | None = None
    attempts: int = 0
    path: str | None = None  # PD fleets: "split" (two-step) or "whole"; None elsewhere


@dataclass
class RunResult:
    """Everything one replay produced."""

    outcomes: list[RequestOutcome]
    wall_s: float
    virtual_s: float
    engine: dict[str, int]
    decision: dict[str, Any]
    metrics: dict[str, Any]
    instances: list[str]


def _request(record: WorkloadRecord, index: int, prompts: PromptBuilder) -> RequestMetadata:
    return RequestMetadata(
        request_id=record.request_id or f"r{index}",
        prompt=prompts.build(record, index),
        max_tokens=record.output_tokens,
        user_id=record.tenant,
        priority=record.priority,
        ttft_slo_ms=record.ttft_slo_ms,
        tpot_slo_ms=record.tpot_slo_ms,
        slo_deadline_ms=record.deadline_ms,
    )


def _outcome(record: WorkloadRecord, index: int) -> RequestOutcome:
    return RequestOutcome(
        index=index,
        arrival_s=record.arrival_s,
        input_tokens=record.prompt_tokens,
        output_tokens=record.output_tokens,
        slo_class=record.slo_class,
        tenant=record.tenant,
        priority=int(record.priority),
        has_slo=any(
            x is not None for x in (record.ttft_slo_ms, record.tpot_slo_ms, record.deadline_ms)
        ),
        state="pending",
    )


async def replay(
    workload: Sequence[WorkloadRecord],
    fleet: ReplayTarget,
    config: CoordinatorConfig,
    *,
    events: Sequence[tuple[float, FleetEvent]] = (),
    prompt_seed: int = 0,
    prompts: PromptBuilder | None = None,
    close_fleet: bool = True,
    lead_in_s: float = 0.0,
) -> RunResult:
    """Submit each record at its arrival time, wait for all, collect.

    Arrival times count from `lead_in_s` after the coordinator started (its first health
    probes, scrapes and HTTP clients cost real time on a real clock, none on a virtual one).
    """
    wall0 = time.perf_counter()
    with _long_lived_heap():
        return await _replay(
            workload, fleet, config, events, prompt_seed, prompts, close_fleet, lead_in_s, wall0
        )


@contextlib.contextmanager
def _long_lived_heap() -> Iterator[None]:
    """Keep the cyclic GC off the fleet built before the run (its KV block tables alone hold
    millions of entries that a full collection would rescan again and again) and collect the
    young generation less often; both are restored afterwards. Results are unaffected."""
    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 50)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def _replay(
    workload: Sequence[WorkloadRecord],
    fleet: ReplayTarget,
    config: CoordinatorConfig,
    events: Sequence[tuple[float, FleetEvent]],
    prompt_seed: int,
    prompts: PromptBuilder | None,
    close_fleet: bool,
    lead_in_s: float,
    wall0: float,
) -> RunResult:
    loop = asyncio.get_running_loop()
    builder = prompts or PromptBuilder(prompt_seed)
    manager = config.build(fleet, len(workload))
    probe = DecisionCostProbe(manager)
    t0 = loop.time() + lead_in_s
    for at, action in events:
        loop.call_at(t0 + at, action, fleet, manager)
    outcomes = [_outcome(r, i) for i, r in enumerate(workload)]
    ids: list[tuple[int, str]] = []
    await manager.start()
    try:
        for i, record in enumerate(workload):
            delay = t0 + record.arrival_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                ids.append((i, await manager.submit_request(_request(record, i, builder))))
            except (RetryLaterError, RequestRejectedError) as exc:
                outcomes[i].state = "shed"
                outcomes[i].error_type = type(exc).__name__
                outcomes[i].slo_met = False if outcomes[i].has_slo else None
        for i, rid in ids:
            res = await manager.wait(rid)
            o = outcomes[i]
            t = res.timings
            o.state = res.state.value
            o.error_type = res.error_type
            o.instance_id = res.instance_id
            o.completion_tokens = res.completion_tokens
            o.queue_ms, o.ttft_ms, o.tpot_ms, o.e2e_ms = t.queue_ms, t.ttft_ms, t.tpot_ms, t.e2e_ms
            o.finished_s = o.arrival_s + (t.e2e_ms or 0.0) / 1000.0
            o.slo_met = res.slo_met
            o.attempts = res.attempts
            if res.decision is not None and "prefill_used" in res.decision.metadata:
                o.path = "split" if res.decision.metadata["prefill_used"] else "whole"
            elif res.decision is not None and config.enable_pd_separation:
                o.path = "whole"
        metrics = manager.get_metrics().model_dump(mode="json")
    finally:
        await manager.stop()
        if close_fleet:
            await fleet.aclose()
    return RunResult(
        outcomes=outcomes,
        wall_s=time.perf_counter() - wall0,
        virtual_s=loop.time() - t0,
        engine=engine_totals(fleet.sims()),
        decision=probe.summary(),
        metrics=metrics,
        instances=[i.instance_id for i in fleet.instances],
    )


def run_replay(
    workload: Sequence[WorkloadRecord],
    fleet: ReplayTarget,
    config: CoordinatorConfig,
    *,
    events: Sequence[tuple[float, FleetEvent]] = (),
    prompt_seed: int = 0,
) -> RunResult:
    """`replay` on a fresh virtual-clock event loop (blocking; returns when all finished)."""
    return run_virtual(replay(workload, fleet, config, events=events, prompt_seed=prompt_seed))
