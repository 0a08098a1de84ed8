"""How well a calibrated simulator reproduces a recorded run: replay the whole log on a fleet
of simulators with the fitted step-time model (one per recorded instance, same ids, same
coordinator settings) and compare the held-out requests' TTFT and E2E percentiles with the
recorded ones. The fitted-on requests are replayed too, as the load the held-out ones ran
beside; only their sizes and arrivals are used, never their latencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sage_cp_plugin.recording.record import RequestLogRecord
from sage_cp_plugin.recording.reproduce import replay_log
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RequestOutcome


def calibrated_fleet(
    records: Sequence[RequestLogRecord],
    sim_fields: dict[str, Any],
    *,
    max_concurrent_requests: int = 64,
) -> InProcessFleet:
    """One simulator per instance the log names, with `sim_fields` (coefficients and any
    engine settings such as `max_num_seqs`), under the recorded instance ids."""
    ids = sorted({r.decision.instance_id for r in records if r.decision.instance_id})
    return InProcessFleet(
        [
            MemberSpec(
                SimInstanceConfig(seed=i, **sim_fields),
                max_concurrent_requests=max_concurrent_requests,
                instance_id=iid,
            )
            for i, iid in enumerate(ids)
        ],
        direct=True,
    )


def replay_held_out(
    log: Sequence[RequestLogRecord],
    held_out: Sequence[RequestLogRecord],
    sim_fields: dict[str, Any],
    config: CoordinatorConfig,
    *,
    max_concurrent_requests: int = 64,
) -> list[tuple[RequestLogRecord, RequestOutcome]]:
    """Replay `log` (by arrival) on the calibrated fleet; (recorded, simulated) per held-out
    request."""
    ordered = sorted(log, key=lambda r: r.arrival_s)
    fleet = calibrated_fleet(ordered, sim_fields, max_concurrent_requests=max_concurrent_requests)
    run = run_virtual(replay_log(ordered, fleet, config))
    ids = {r.request_id for r in held_out}
    return [(r, o) for r, o in zip(ordered, run.outcomes, strict=True) if r.request_id in ids]


def _pcts(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 90))


def latency_errors(pairs: Sequence[tuple[RequestLogRecord, RequestOutcome]]) -> dict[str, Any]:
    """Recorded vs simulated P50/P90 of TTFT and E2E (ms) and their relative errors, over the
    requests completed in both."""
    done = [(r, o) for r, o in pairs if r.state.value == "completed" and o.state == "completed"]
    out: dict[str, Any] = {"requests": len(done)}
    for name in ("ttft_ms", "e2e_ms"):
        rec = [getattr(r.timings, name) for r, o in done if getattr(r.timings, name) is not None]
        sim = [getattr(o, name) for r, o in done if getattr(o, name) is not None]
        if not rec or not sim:
            continue
        (r50, r90), (s50, s90) = _pcts(rec), _pcts(sim)
        out[name] = {
            "recorded_p50": r50,
            "recorded_p90": r90,
            "simulated_p50": s50,
            "simulated_p90": s90,
            "p50_error": (s50 - r50) / r50 if r50 else None,
            "p90_error": (s90 - r90) / r90 if r90 else None,
        }
    return out
