"""Does a replay of a request log make the decisions the log recorded?

`replay_log` replays a log's requests (`importer.workload_of`) through the real coordinator on
a virtual clock against a fleet, and `compare_decisions` pairs each replayed request with its
recorded line by request id and counts those sent to the same instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sage_cp_plugin.recording.importer import workload_of
from sage_cp_plugin.recording.record import RequestLogRecord
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RunResult, replay
from sage_cp_plugin.virtual.target import ReplayTarget


@dataclass
class DecisionCheck:
    """Recorded vs replayed instance per request."""

    compared: int = 0
    same: int = 0
    # (request id, recorded instance, replayed instance) of every disagreement
    differing: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return self.same / self.compared if self.compared else 1.0


async def replay_log(
    log: Sequence[RequestLogRecord],
    fleet: ReplayTarget,
    config: CoordinatorConfig,
    *,
    from_start: bool = False,
) -> RunResult:
    """Replay the log's requests at their recorded arrivals, counted from the first one, or
    with `from_start` from the recording coordinator's start (its arrival 0): then the
    coordinator's periodic work (health probes, scrapes) falls between the requests as it
    did when they were recorded, which load-aware decisions read (a log of a long-running
    gateway would replay its idle hours first)."""
    work = [workload_of(r) for r in log]
    t0 = work[0].arrival_s if work and not from_start else 0.0
    work = [w.model_copy(update={"arrival_s": w.arrival_s - t0}) for w in work]
    return await replay(work, fleet, config)


def compare_decisions(log: Sequence[RequestLogRecord], run: RunResult) -> DecisionCheck:
    """Pairs `run.outcomes` (in the order `replay_log` submitted them) with `log`."""
    check = DecisionCheck()
    for rec, out in zip(log, run.outcomes, strict=True):
        check.compared += 1
        if rec.decision.instance_id == out.instance_id:
            check.same += 1
        else:
            check.differing.append((rec.request_id, rec.decision.instance_id, out.instance_id))
    return check
