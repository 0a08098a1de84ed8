"""ControlPlaneManager end to end over real HTTP against the simulator on 127.0.0.1."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sage_cp_plugin import (
    ControlPlaneManager,
    ExecutionInstance,
    RequestMetadata,
    RequestPriority,
    RequestStatus,
)
from sage_cp_plugin.errors import (
    DuplicateInstanceError,
    ModelNotServedError,
    QueueFullError,
)
from sage_cp_plugin.health import HealthConfig
from tests.helpers import wait_until
from tests.simfleet import gen, managed_fleet


async def test_submit_wait_status_and_metrics() -> None:
    async with managed_fleet(gen(2)) as (m, _):
        rid = await m.submit_request(RequestMetadata(prompt="hello there", max_tokens=8))
        res = await m.wait(rid, timeout=30)
        assert res.state == "completed" and res.state is RequestStatus.COMPLETED
        assert res.output and res.completion_tokens == 8 and res.prompt_tokens == 2
        assert (await m.get_request_status(rid)).state == "completed"
        t = res.timings
        assert t.queue_ms is not None and t.ttft_ms is not None and t.e2e_ms is not None
        assert 0 <= t.queue_ms <= t.ttft_ms <= t.e2e_ms
        assert t.tpot_ms is not None and t.tpot_ms > 0
        met = m.get_metrics()
        assert (met.total_requests, met.completed_requests, met.failed_requests) == (1, 1, 0)
        assert met.avg_latency_ms > 0 and met.p99_latency_ms >= met.p50_latency_ms
        assert met.tokens_per_second > 0 and met.requests_per_second > 0


async def _dispatch_order(policy: str) -> list[str]:
    """Run one blocker then five requests through a single-slot instance; return start order."""
    async with managed_fleet(
        gen(1), scheduling_policy=policy, instance_fields={"max_concurrent_requests": 1}
    ) as (m, _):
        blocker = await m.submit_request(RequestMetadata(prompt="block " * 20, max_tokens=64))
        # Submit the rest only once the blocker runs, so they all queue behind it.
        await wait_until(lambda: m.dispatcher.in_flight_count() == 1, "the blocker to run")
        specs = [
            ("r1", RequestPriority.LOW, None),
            ("r2", RequestPriority.CRITICAL, 10_000.0),
            ("r3", RequestPriority.NORMAL, 5_000.0),
            ("r4", RequestPriority.HIGH, None),
            ("r5", RequestPriority.BACKGROUND, 2_000.0),
        ]
        for rid, prio, deadline in specs:
            await m.submit_request(
                RequestMetadata(
                    request_id=rid,
                    prompt="same length prompt",
                    max_tokens=4,
                    priority=prio,
                    slo_deadline_ms=deadline,
                )
            )
        results = [await m.wait(rid, timeout=60) for rid, _, _ in specs]
        await m.wait(blocker, timeout=60)
        assert all(r.state == "completed" for r in results)
        starts = {r.request_id: r.timings.queue_ms for r in results}
        return sorted(starts, key=lambda k: starts[k])  # type: ignore[arg-type, return-value]


async def test_policies_change_which_request_runs_next() -> None:
    fifo = await _dispatch_order("fifo")
    prio = await _dispatch_order("priority")
    slo = await _dispatch_order("slo_aware")
    assert fifo == ["r1", "r2", "r3", "r4", "r5"]
    assert prio == ["r2", "r4", "r3", "r1", "r5"]
    assert slo == ["r5", "r3", "r2", "r1", "r4"]


async def test_routers_change_where_requests_run() -> None:
    async def spread(router: str, **fields: object) -> dict[str, int]:
        async with managed_fleet(gen(3), routing_strategy=router) as (m, _):
            rids = [
                await m.submit_request(RequestMetadata(prompt=f"q{i}", max_tokens=2, **fields))  # type: ignore[arg-type]
                for i in range(30)
            ]
            counts: dict[str, int] = {}
            for rid in rids:
                res = await m.wait(rid, timeout=30)
                assert res.instance_id is not None
                counts[res.instance_id] = counts.get(res.instance_id, 0) + 1
            return counts

    rr = await spread("round_robin")
    assert sorted(rr.values()) == [10, 10, 10]
    # A burst of 30 from one hot user: bounded load spreads it (no instance > (1+eps) share).
    burst = await spread("affinity", user_id="alice")
    assert max(burst.values()) <= 14
    # One user at a time: every request lands on the user's home instance.
    async with managed_fleet(gen(3), routing_strategy="affinity") as (m, _):
        homes = {
            (await m.generate(f"q{i}", max_tokens=2, user_id="alice")).instance_id
            for i in range(10)
        }
        others = {
            (await m.generate(f"q{i}", max_tokens=2, user_id=f"user-{i}")).instance_id
            for i in range(30)
        }
    assert len(homes) == 1
    assert len(others) == 3


async def test_in_flight_limit_is_respected() -> None:
    async with managed_fleet(gen(2), instance_fields={"max_concurrent_requests": 2}) as (m, fleet):
        async with httpx.AsyncClient() as c:
            for member in fleet:  # hold every request, so the limit is what stops dispatch
                (await c.post(f"{member.url}/sim/faults", json={"hang": True})).raise_for_status()
            rids = [
                await m.submit_request(RequestMetadata(prompt="x", max_tokens=16))
                for _ in range(20)
            ]
            await wait_until(lambda: len(m.queue) == 16, "16 queued behind 2 x 2 slots")
            assert [s.in_flight for s in m.fleet] == [2, 2]
            for member in fleet:
                (await c.post(f"{member.url}/sim/faults", json={})).raise_for_status()
        results = [await m.wait(r, timeout=60) for r in rids]
        assert all(r.state == "completed" for r in results)
        # Never more than 2 at once on an engine, while the queue drained too.
        assert max(member.sim.engine.counters.max_batch_seqs for member in fleet) <= 2
        assert max(r.timings.queue_ms or 0 for r in results) > 0  # later ones had to queue


async def test_generate_and_stream() -> None:
    async with managed_fleet(gen(1)) as (m, _):
        res = await m.generate("tell me", max_tokens=5)
        assert res.state == "completed" and res.completion_tokens == 5
        chunks = [
            c async for c in m.stream(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        ]
        text = "".join(
            (c["choices"][0].get("delta") or {}).get("content") or ""
            for c in chunks
            if c["choices"]
        )
        assert text.strip() and any(c.get("usage") for c in chunks)


async def test_duplicate_instance_and_request_ids() -> None:
    async with managed_fleet(gen(1)) as (m, fleet):
        with pytest.raises(DuplicateInstanceError, match="sim-0"):
            m.register_instance(ExecutionInstance(instance_id="sim-0", port=fleet[0].port))
        await m.submit_request(RequestMetadata(request_id="same", prompt="a", max_tokens=2))
        with pytest.raises(ValueError, match="already in use"):
            await m.submit_request(RequestMetadata(request_id="same", prompt="b", max_tokens=2))
        assert (await m.wait("same", timeout=30)).state == "completed"


async def test_unknown_model_is_a_clear_error() -> None:
    async with managed_fleet(gen(1)) as (m, _):
        with pytest.raises(ModelNotServedError) as err:
            await m.submit_request(RequestMetadata(prompt="x", model_name="gpt-9"))
        assert "gpt-9" in str(err.value) and "sim-model" in str(err.value)
        assert m.list_models() == ["sim-model"]
        # Nothing else was disturbed.
        assert (await m.generate("ok", max_tokens=2)).state == "completed"


async def test_full_queue_rejects_and_loses_nothing() -> None:
    async with managed_fleet(
        gen(1, time_scale=0.2),
        max_pending_requests=3,
        instance_fields={"max_concurrent_requests": 1},
    ) as (m, _):
        admitted = [await m.submit_request(RequestMetadata(prompt="x", max_tokens=32))]
        await wait_until(lambda: m.dispatcher.in_flight_count() == 1, "the first to run")
        admitted += [
            await m.submit_request(RequestMetadata(prompt="x", max_tokens=4)) for _ in range(3)
        ]
        with pytest.raises(QueueFullError, match="queue is full"):
            await m.submit_request(RequestMetadata(prompt="x", max_tokens=4))
        results = [await m.wait(r, timeout=60) for r in admitted]
        assert [r.state for r in results] == ["completed"] * 4
        assert m.get_metrics().total_requests == 4


async def test_refused_connections_fail_over_and_never_hang() -> None:
    async with managed_fleet(gen(1), max_attempts=3, retry_backoff_s=0.01) as (m, fleet):
        # An instance whose port has nothing listening: connections are refused.
        dead_port = fleet[0].port + 1 if fleet[0].port < 65000 else fleet[0].port - 1
        m.register_instance(
            ExecutionInstance(
                instance_id="dead", port=dead_port, host="127.0.0.1", model_name="sim-model"
            )
        )
        m.update_router("round_robin")
        results = [await m.generate(f"q{i}", max_tokens=2) for i in range(6)]
        assert all(r.state == "completed" and r.instance_id == "sim-0" for r in results)
        assert any(r.attempts == 2 for r in results)
        assert m.get_metrics().failovers >= 1
    # Only a dead instance: the request fails with the reason, it does not hang.
    async with managed_fleet([], max_attempts=2, retry_backoff_s=0.01) as (m, _):
        m.register_instance(
            ExecutionInstance(instance_id="dead", port=9, host="127.0.0.1", model_name="x")
        )
        res = await asyncio.wait_for(m.generate("q", max_tokens=2), 30)
        assert res.state == "failed" and "dead" in (res.error or "")
        assert "unreachable" in (res.error or "") or "no healthy instance" in (res.error or "")


async def test_health_checks_cover_instances_registered_before_start() -> None:
    async with managed_fleet(
        gen(2), health=HealthConfig(interval_s=0.05, timeout_s=0.5, unhealthy_threshold=2)
    ) as (m, fleet):
        await fleet.kill(1)
        s1 = m.fleet.get("sim-1")
        assert s1 is not None
        await wait_until(lambda: not s1.healthy, "sim-1 marked unhealthy")
        results = [await m.generate(f"q{i}", max_tokens=2) for i in range(4)]
        assert {r.instance_id for r in results} == {"sim-0"}
        await fleet.restart(1)
        await wait_until(lambda: s1.healthy, "sim-1 healthy again")


async def test_start_stop_idempotent_and_leave_no_tasks() -> None:
    before = {t for t in asyncio.all_tasks() if t.get_name().startswith("sage-cp")}
    m = ControlPlaneManager(scheduling_policy="fifo")
    await m.start()
    await m.start()
    names = sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("sage-cp"))
    assert names == ["sage-cp-dispatch", "sage-cp-health", "sage-cp-scrape"]
    await m.stop()
    await m.stop()
    after = {t for t in asyncio.all_tasks() if t.get_name().startswith("sage-cp") and not t.done()}
    assert after == before == set()


async def test_stop_fails_pending_requests_with_reason() -> None:
    async with managed_fleet(
        gen(1, time_scale=0.5), instance_fields={"max_concurrent_requests": 1}
    ) as (m, _):
        running = await m.submit_request(RequestMetadata(prompt="x", max_tokens=200))
        await wait_until(lambda: m.dispatcher.in_flight_count() == 1, "the first to run")
        queued = await m.submit_request(RequestMetadata(prompt="y", max_tokens=2))
        await m.stop()
        q = await m.get_request_status(queued)
        r = await m.get_request_status(running)
        assert q.state == "failed" and "stopped" in (q.error or "")
        assert r.state == "cancelled"


async def test_urgent_headroom_lets_interactive_work_past_a_full_instance() -> None:
    async with managed_fleet(
        gen(1, time_scale=0.5), urgent_headroom=1.0, instance_fields={"max_concurrent_requests": 2}
    ) as (m, _):
        busy = [
            await m.submit_request(RequestMetadata(prompt="x", max_tokens=100)) for _ in range(3)
        ]
        state = m.fleet.get("sim-0")
        assert state is not None
        await wait_until(lambda: state.in_flight == 2 and len(m.queue) == 1, "two running")
        urgent = await m.submit_request(
            RequestMetadata(prompt="now", max_tokens=100, priority=RequestPriority.HIGH)
        )
        tight = await m.submit_request(
            RequestMetadata(prompt="now", max_tokens=100, ttft_slo_ms=200)
        )
        # Both urgent ones go into the headroom at once, past the waiting normal one.
        await wait_until(lambda: state.in_flight == 4, "the urgent requests to run")
        assert (await m.get_request_status(busy[2])).state == "queued"
        for rid in (urgent, tight, *busy):
            assert (await m.wait(rid, timeout=60)).state == "completed"


async def _late_vs_batch_order(**manager_kwargs: object) -> list[str]:
    """Behind a blocker on a single-slot instance: an interactive request whose 1 ms TTFT
    SLO is lost by the time it can start, then a shorter request without any objective."""
    async with managed_fleet(
        gen(1),
        scheduling_policy="slo_aware",
        instance_fields={"max_concurrent_requests": 1},
        **manager_kwargs,  # type: ignore[arg-type]
    ) as (m, _):
        blocker = await m.submit_request(RequestMetadata(prompt="block " * 20, max_tokens=64))
        await wait_until(lambda: m.dispatcher.in_flight_count() == 1, "the blocker to run")
        await m.submit_request(
            RequestMetadata(
                request_id="late",
                prompt="same length prompt",
                max_tokens=32,
                priority=RequestPriority.HIGH,
                ttft_slo_ms=1.0,
            )
        )
        await m.submit_request(
            RequestMetadata(
                request_id="batch",
                prompt="same length prompt",
                max_tokens=1,
                priority=RequestPriority.LOW,
            )
        )
        results = [await m.wait(rid, timeout=60) for rid in ("late", "batch")]
        await m.wait(blocker, timeout=60)
        assert all(r.state == "completed" for r in results)
        starts = {r.request_id: r.timings.queue_ms for r in results}
        return sorted(starts, key=lambda k: starts[k])  # type: ignore[arg-type, return-value]


async def test_slo_aware_demotes_a_request_that_lost_its_ttft_slo_behind_later_work() -> None:
    # Default late_action="demote": the interactive request, hopeless once the slot frees,
    # is re-queued as work without an objective, where the shorter batch request is ahead.
    assert await _late_vs_batch_order() == ["batch", "late"]
    # late_action="run": its (missed) first-token deadline still puts it first.
    assert await _late_vs_batch_order(policy_options={"late_action": "run"}) == [
        "late",
        "batch",
    ]
