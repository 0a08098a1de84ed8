"""An A/B experiment replayed offline: the same arms, fleet and requests through the real
coordinator on the virtual clock, with outcome rows in the outcome log's shape, so that
`ab_report` reads a live log and an offline replay alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_cp_plugin.experiments.router import ExperimentRouter
from sage_cp_plugin.types import RequestMetadata
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RunResult, run_replay
from sage_cp_plugin.workloads.format import WorkloadRecord


def request_ids(records: Sequence[WorkloadRecord]) -> list[WorkloadRecord]:
    """Records with the ids the replay runner gives them (`r<index>`), made explicit."""
    return [
        r if r.request_id else r.model_copy(update={"request_id": f"r{i}"})
        for i, r in enumerate(records)
    ]


def arms_of(records: Sequence[WorkloadRecord], options: dict[str, Any]) -> list[str | None]:
    """The arm each record is assigned to (sticky: its user, else its request id)."""
    router = ExperimentRouter(**options)
    return [
        router.assign(
            RequestMetadata(request_id=r.request_id or f"r{i}", user_id=r.tenant, prompt="x")
        )
        for i, r in enumerate(records)
    ]


def outcome_rows(result: RunResult, arms: Sequence[str | None]) -> list[dict[str, Any]]:
    return [
        {
            "arm": arm,
            "request_id": f"r{o.index}",
            "state": "completed" if o.state == "completed" else o.state,
            "instance_id": o.instance_id,
            "ttft_ms": o.ttft_ms,
            "tpot_ms": o.tpot_ms,
            "e2e_ms": o.e2e_ms,
            "queue_ms": o.queue_ms,
            "slo_met": o.slo_met,
            "cost": None,
        }
        for o, arm in zip(result.outcomes, arms, strict=True)
    ]


def replay_experiment(
    records: Sequence[WorkloadRecord],
    members: Sequence[MemberSpec],
    options: dict[str, Any],
    *,
    policy: str = "fifo",
    seed: int = 0,
    upstream_streaming: bool = True,
) -> list[dict[str, Any]]:
    """Outcome rows of the experiment `options` (ExperimentConfig) replayed on `members`."""
    records = request_ids(records)
    config = CoordinatorConfig(
        router="experiment",
        router_options=dict(options),
        policy=policy,
        upstream_streaming=upstream_streaming,
    )
    result = run_replay(records, InProcessFleet(list(members)), config, prompt_seed=seed)
    return outcome_rows(result, arms_of(records, options))
