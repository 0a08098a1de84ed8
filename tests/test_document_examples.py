"""The sageLLM Control Plane document's examples run as written (import changed) and reach
`completed`, against simulated vLLM instances on 127.0.0.1:8000/8001."""

from __future__ import annotations

import asyncio
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_cp_plugin import ControlPlaneManager, ExecutionInstanceType, RequestMetadata
from sage_cp_plugin.sim import SimFleetThread, SimInstanceConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "document"


@pytest.fixture()
def sims_at_8000(request: pytest.FixtureRequest) -> Iterator[SimFleetThread]:
    model: str = request.param
    configs = [
        SimInstanceConfig(served_model_names=[model], time_scale=0.01, seed=i) for i in range(2)
    ]
    with SimFleetThread(configs, port=8000) as fleet:
        yield fleet


def run_example(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[Any]]:
    """Execute an example file; return its globals and what its asyncio.run calls returned."""
    returned: list[Any] = []
    real_run = asyncio.run

    def spy(coro: Any, **kw: Any) -> Any:
        value = real_run(coro, **kw)
        returned.append(value)
        return value

    monkeypatch.setattr(asyncio, "run", spy)
    ns = runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    monkeypatch.setattr(asyncio, "run", real_run)
    return ns, returned


@pytest.mark.parametrize("sims_at_8000", ["meta-llama/Llama-2-7b"], indirect=True)
def test_method1_direct_api(
    sims_at_8000: SimFleetThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, returned = run_example("method1_direct_api.py", monkeypatch)
    status = returned[0]
    assert status.state == "completed", status.error
    assert status.output and status.instance_id == "decode-1"  # short, HIGH priority -> decode
    out = capsys.readouterr().out
    assert "Throughput:" in out and "Latency:" in out


@pytest.mark.parametrize("sims_at_8000", ["meta-llama/Llama-2-7b"], indirect=True)
def test_method2_llm_service(
    sims_at_8000: SimFleetThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_example("method2_llm_service.py", monkeypatch)
    out = capsys.readouterr().out
    assert out.startswith("Output: ") and len(out.strip()) > len("Output:")


async def _submit_and_wait(manager: ControlPlaneManager, **fields: Any) -> Any:
    await manager.start()
    try:
        return await manager.generate(**fields)
    finally:
        await manager.stop()


@pytest.mark.parametrize("sims_at_8000", ["meta-llama/Llama-2-7b"], indirect=True)
def test_basic_config(
    sims_at_8000: SimFleetThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns, _ = run_example("basic_config.py", monkeypatch)
    out = capsys.readouterr().out
    assert "scheduling policy: fifo" in out
    assert "registered vllm-1: general at http://localhost:8000" in out
    result = asyncio.run(_submit_and_wait(ns["manager"], prompt="hello", max_tokens=8))
    assert result.state == "completed" and result.instance_id == "vllm-1"


@pytest.mark.parametrize("sims_at_8000", ["meta-llama/Llama-2-70b"], indirect=True)
def test_pd_config_routes_by_phase(
    sims_at_8000: SimFleetThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns, _ = run_example("pd_config.py", monkeypatch)
    out = capsys.readouterr().out
    assert "registered prefilling-1: prefilling at http://localhost:8000" in out
    assert "registered decoding-1: decoding at http://localhost:8001" in out
    manager: ControlPlaneManager = ns["manager"]
    long_prompt = "context " * 3000  # ~3000 estimated tokens > 2048 threshold

    async def both() -> tuple[Any, Any]:
        await manager.start()
        try:
            a = await manager.generate(prompt=long_prompt, max_tokens=4)
            b = await manager.generate(prompt="short question", max_tokens=4)
            return a, b
        finally:
            await manager.stop()

    long_res, short_res = asyncio.run(both())
    assert long_res.state == short_res.state == "completed"
    assert long_res.instance_id == "prefilling-1"
    assert long_res.decision.phase is ExecutionInstanceType.PREFILLING
    assert short_res.instance_id == "decoding-1"


@pytest.mark.parametrize("sims_at_8000", ["llama-3-70b"], indirect=True)
def test_production_config_constructs_then_runs_on_loopback(
    sims_at_8000: SimFleetThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns, _ = run_example("production_config.py", monkeypatch)
    out = capsys.readouterr().out
    assert out.count("registered vllm-") == 3 and "routing: affinity" in out
    manager: ControlPlaneManager = ns["manager"]
    assert [s.instance.host for s in manager.fleet] == [
        "192.168.1.100",
        "192.168.1.101",
        "192.168.1.102",
    ]
    assert manager.routing_strategy == "affinity"
    # Never contact 192.168.1.x: point every instance at the simulator before starting.
    for s in manager.fleet:
        s.instance.host = "127.0.0.1"
    result = asyncio.run(
        _submit_and_wait(manager, request=RequestMetadata(prompt="hi", max_tokens=4, user_id="u1"))
    )
    assert result.state == "completed"
