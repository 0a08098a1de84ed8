"""A stretch of gateway traffic, recorded against real HTTP simulator servers in real time,
replays on the virtual clock against the same fleet and makes the same decisions.

Tolerance, stated: decisions that depend only on order and cache content (round_robin under
any overlap; prefix_aware and load_balanced when each request finishes before the next is
sent) must agree exactly. Under overlap, load-aware routers read in-flight counts and scraped
engine load whose values depend on real-time jitter on a busy machine; there the virtual
replay is a model of the run, not a copy, and this test does not claim agreement.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sage_cp_plugin.recording import RequestLogRecord
from sage_cp_plugin.recording.importer import import_request_log, read_request_log
from sage_cp_plugin.recording.reproduce import compare_decisions, replay_log
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual import CoordinatorConfig, InProcessFleet, MemberSpec, run_virtual
from sage_cp_plugin.virtual.runner import RunResult
from sage_cp_plugin.workloads import PromptBuilder, WorkloadRecord
from tests.test_gateway_support import gateway_over_sim

TIME_SCALE = 0.05


def _configs() -> list[SimInstanceConfig]:
    return [SimInstanceConfig(time_scale=TIME_SCALE, seed=i) for i in range(3)]


def _workload() -> list[WorkloadRecord]:
    # Four tenants, each with its own 512-token system prefix, asking in turn.
    return [
        WorkloadRecord(
            arrival_s=0.0,
            input_tokens=600 + 37 * (i % 5),
            output_tokens=3 + i % 4,
            prefix_blocks=(1000 + i % 4,),
            tenant=f"t{i % 4}",
        )
        for i in range(16)
    ]


async def _record(router: str, log_dir: Path, *, concurrent: bool) -> None:
    prompts = PromptBuilder(0)
    work = _workload()
    async with gateway_over_sim(
        _configs(),
        routing_strategy=router,
        request_log={"path": str(log_dir), "salt": "test", "source": "gateway"},
    ) as h:
        async with h.client() as c:

            async def send(i: int, w: WorkloadRecord) -> None:
                r = await c.post(
                    "/v1/completions",
                    json={
                        "model": "sim-model",
                        "prompt": prompts.build(w, i),
                        "max_tokens": w.output_tokens,
                        "user": w.tenant,
                    },
                )
                assert r.status_code == 200, r.text

            if concurrent:
                await asyncio.gather(*(send(i, w) for i, w in enumerate(work)))
            else:
                for i, w in enumerate(work):
                    await send(i, w)


def _replay(log_dir: Path, router: str) -> tuple[list[RequestLogRecord], RunResult]:
    log = read_request_log(log_dir)
    # The same fleet as the gateway's: same engines, and the instances described alike
    # (`sim_instances` registers the default slot cap and no engine metadata).
    fleet = InProcessFleet(
        [MemberSpec(c, max_concurrent_requests=100, extra={"metadata": {}}) for c in _configs()]
    )
    cfg = CoordinatorConfig(policy="fifo", router=router, enable_pd_separation=True)
    return log, run_virtual(replay_log(log, fleet, cfg))


@pytest.mark.parametrize("router", ["round_robin", "prefix_aware", "load_balanced"])
def test_sequential_gateway_traffic_replays_to_the_same_instances(
    router: str, tmp_path: Path
) -> None:
    asyncio.run(_record(router, tmp_path, concurrent=False))
    log, run = _replay(tmp_path, router)
    assert len(log) == 16 and all(r.source == "gateway" for r in log)
    assert all(r.state.value == "completed" and r.decision.router == router for r in log)
    assert len({r.decision.instance_id for r in log}) > 1  # the fleet was really used
    check = compare_decisions(log, run)
    assert check.differing == [] and check.same == 16
    # The replay ran what was recorded: same lengths, same shared prefixes.
    assert [o.completion_tokens for o in run.outcomes] == [r.output_tokens for r in log]
    if router == "prefix_aware":
        # Each tenant's requests stay on one instance (its prefix is cached there).
        by_tenant: dict[str | None, set[str | None]] = {}
        for r in log:
            by_tenant.setdefault(r.user_id, set()).add(r.decision.instance_id)
        assert all(len(s) == 1 for s in by_tenant.values())


def test_concurrent_burst_round_robin_replays_exactly(tmp_path: Path) -> None:
    asyncio.run(_record("round_robin", tmp_path, concurrent=True))
    log, run = _replay(tmp_path, "round_robin")
    check = compare_decisions(log, run)
    assert check.compared == 16 and check.differing == []


def test_the_log_imports_as_a_workload_with_its_sharing(tmp_path: Path) -> None:
    asyncio.run(_record("round_robin", tmp_path, concurrent=False))
    got = import_request_log(tmp_path)
    assert got.timed and len(got.records) == 16
    recs = got.records
    # One shared block per tenant: 4 distinct first hashes, each used by 4 requests.
    firsts = [r.prefix_blocks[0] for r in recs]
    assert len(set(firsts)) == 4 and all(firsts.count(h) == 4 for h in firsts)
    assert [r.tenant for r in recs[:4]] == ["t0", "t1", "t2", "t3"]
    assert all(r.arrival_s >= 0 for r in recs)
