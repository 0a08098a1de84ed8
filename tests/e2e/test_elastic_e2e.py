"""The local actuator scales real vLLM servers (issue 15): under a load step the autoscaler adds
a `vllm serve` process on this CPU, which enters routing once it answers; when the load falls,
one is drained and removed; no request sent after the first server answered is lost.

The servers are started by the actuator itself from the tier's own command line
(`VllmFleet.serve_command`: same flags, environment and working directory as the tier's
other servers). The scaler's capacity model is set small on purpose, as in
tests/test_elastic_actuators.py: 8 prompt + 8 output tokens at 30 ms each is about 0.5 s of
modelled work per request, 0.72 of a replica usable, so one client's 1 req/s asks for one
replica and three clients' 3 req/s for two (max 2), with wide margins for a loaded machine
where timers fire late. The online correction is pinned to 1 (a real CPU's speed has nothing
to do with this made-up model; the correction is tested in test_elastic_autoscaler.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from vllm_fleet import VllmFleet

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.elastic.local_process import LocalProcessActuator
from sage_cp_plugin.types import RequestStatus
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 420.0  # a vLLM start is ~35 s alone, several times that on a loaded CPU


async def _scale_up_and_down(command: list[str], model: str, log_dir: Path) -> list[Any]:
    scaling: dict[str, Any] = {
        "model": model,
        "actuator": "local",
        "actuator_options": {"command": command, "interval_s": 0.2, "log_dir": str(log_dir),
                             "max_concurrent_requests": 8},
        "step_model": {"b0_s": 0.005, "b1_s_per_token": 0.03, "b2_s_per_seq": 0.03},
        "scaler": {"interval_s": 1.0, "max_replicas": 2, "min_replicas": 1,
                   "cold_start_s": 60, "scale_down_window_s": 10.0,
                   "scale_down_cooldown_s": 5.0, "forecast_window_s": 5.0,
                   "correction_min": 1.0, "correction_max": 1.0},
    }  # fmt: skip
    cp = ControlPlaneManager(enable_monitoring=False, enable_auto_scaling=True,
                             autoscaling=scaling, discovery_interval_s=0.2,
                             scheduling_policy="fifo")  # fmt: skip
    assert cp.elastic is not None and cp.elastic.controller is not None
    act = cp.elastic.controller.actuator
    assert isinstance(act, LocalProcessActuator)
    results: list[Any] = []
    sent: list[asyncio.Task[None]] = []
    phase = {"clients": 0}
    stop = asyncio.Event()
    served_by: dict[str, int] = {}

    async def one() -> None:
        try:
            r = await cp.generate("one two three four five six seven eight",
                                  model_name=model, max_tokens=8, temperature=0)  # fmt: skip
            results.append(r)
            if r.instance_id:
                served_by[r.instance_id] = served_by.get(r.instance_id, 0) + 1
        except Exception as exc:  # a refused request is a lost one
            results.append(exc)

    async def client(i: int) -> None:
        # Open loop, one request a second per active client (pacing, not synchronisation).
        while not stop.is_set():
            if i < phase["clients"]:
                sent.append(asyncio.create_task(one()))
            await asyncio.sleep(1.0)

    def serving() -> int:
        return cp.elastic.controller.ready(model).get("general", 0)  # type: ignore[union-attr]

    await cp.start()
    tasks = [asyncio.create_task(client(i)) for i in range(3)]
    try:
        phase["clients"] = 1
        await wait_until(lambda: serving() >= 1, "first vLLM server", timeout_s=START_TIMEOUT_S)
        phase["clients"] = 3  # the step
        await wait_until(lambda: serving() == 2, "a second vLLM server added under load",
                         timeout_s=START_TIMEOUT_S)  # fmt: skip
        await wait_until(lambda: len(served_by) == 2, "the added server serving requests",
                         timeout_s=120)  # fmt: skip
        phase["clients"] = 1  # back down; traffic keeps flowing while one drains
        await wait_until(lambda: serving() == 1 and len(act.processes) == 1,
                         "one server drained, removed and stopped", timeout_s=300)  # fmt: skip
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(*sent)
        await cp.stop()
    assert not act.processes  # stop() terminated the last one
    assert len(served_by) == 2, served_by  # both servers answered requests
    return results


def test_local_actuator_adds_and_drains_real_vllm_servers(
    vllm_fleet: VllmFleet, tiny_model_name: str, tmp_path: Path
) -> None:
    command = vllm_fleet.serve_command("general")
    log_dir = vllm_fleet.log_dir / "elastic"
    results = asyncio.run(_scale_up_and_down(command, tiny_model_name, log_dir))
    done = [r for r in results if not isinstance(r, Exception)]
    ok = [i for i, r in enumerate(results) if r in done and r.status == RequestStatus.COMPLETED]
    assert ok, f"no request completed; server logs in {log_dir}"
    lost = [r for r in results[ok[0]:] if isinstance(r, Exception)
            or r.status != RequestStatus.COMPLETED]  # fmt: skip
    assert not lost, lost[:3]
    assert len(ok) > 30
