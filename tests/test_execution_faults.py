"""Retries, failover, timeouts, broken streams: every request ends once, completed or failed
with its reason; nothing is lost or completed twice."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from sage_cp_plugin import ExecutionCoordinator, RequestMetadata
from sage_cp_plugin.health import HealthConfig
from sage_cp_plugin.sim import SimFleet
from tests.helpers import wait_until
from tests.simfleet import gen, managed_fleet

NO_PROBES = HealthConfig(interval_s=3600, failure_threshold=1000)


async def set_faults(fleet: SimFleet, i: int, **faults: Any) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{fleet[i].url}/sim/faults", json=faults)
        r.raise_for_status()


async def test_429_retry_after_is_honoured_on_another_instance() -> None:
    async with managed_fleet(gen(2), routing_strategy="round_robin", health=NO_PROBES) as (
        m,
        fleet,
    ):
        await set_faults(fleet, 0, rate_limit_rate=1.0, retry_after_s=0.3)
        res = await m.generate("q", max_tokens=2)
        assert res.state == "completed" and res.instance_id == "sim-1" and res.attempts == 2
        assert (
            res.timings.queue_ms is not None and res.timings.queue_ms >= 300
        )  # waited Retry-After
        assert m.get_metrics().retries == 1


async def test_500_forever_fails_with_the_reason_after_bounded_attempts() -> None:
    async with managed_fleet(gen(2), max_attempts=3, retry_backoff_s=0.01, health=NO_PROBES) as (
        m,
        fleet,
    ):
        for i in range(2):
            await set_faults(fleet, i, error_rate=1.0)
        res = await asyncio.wait_for(m.generate("q", max_tokens=2), 30)
        assert res.state == "failed" and res.attempts == 3
        assert "HTTP 500" in (res.error or "")


async def test_client_errors_are_not_retried() -> None:
    async with managed_fleet(gen(2), health=NO_PROBES) as (m, _):
        res = await m.generate("q", max_tokens=2, extra_body={"max_tokens": -1})
        assert res.state == "failed" and res.attempts == 1 and "HTTP 400" in (res.error or "")


async def test_hanging_instance_times_out_and_request_moves_on() -> None:
    async with managed_fleet(
        gen(2),
        routing_strategy="round_robin",
        health=NO_PROBES,
        executor=ExecutionCoordinator(timeout_s=0.5),
    ) as (m, fleet):
        await set_faults(fleet, 0, hang=True)
        res = await asyncio.wait_for(m.generate("q", max_tokens=2), 30)
        assert res.state == "completed" and res.instance_id == "sim-1" and res.attempts == 2


async def test_broken_streams_fail_over_before_bytes_reach_the_caller() -> None:
    async with managed_fleet(gen(2), routing_strategy="round_robin", health=NO_PROBES) as (
        m,
        fleet,
    ):
        await set_faults(fleet, 0, disconnect_after_chunks=2)
        # Not streamed to the caller: nothing was relayed, so a retry elsewhere is safe.
        res = await m.generate("q", max_tokens=8)
        assert res.state == "completed" and res.instance_id == "sim-1" and res.attempts == 2
        # Streamed to the caller: bytes went out, so no retry; a clear failure instead.
        m.update_router("round_robin")
        got: list[dict[str, Any]] = []
        error = None
        try:
            async for chunk in m.stream("q", max_tokens=8):
                got.append(chunk)
        except Exception as exc:
            error = exc
        assert got and error is not None
        failed = [r for r in m.results if r.state == "failed"]
        assert len(failed) == 1 and failed[0].attempts == 1


async def test_malformed_json_and_truncated_sse_fail_over() -> None:
    async with managed_fleet(gen(2), routing_strategy="round_robin", health=NO_PROBES) as (
        m,
        fleet,
    ):
        await set_faults(fleet, 0, truncated_sse=True)
        res = await m.generate("q", max_tokens=4)
        assert res.state == "completed" and res.instance_id == "sim-1" and res.attempts == 2
        await set_faults(fleet, 0, malformed_json=True)
        m.update_router("round_robin")
        res2 = await m.generate("q", max_tokens=4)
        assert res2.state == "completed" and res2.instance_id == "sim-1" and res2.attempts == 2


async def test_all_instances_down_fails_clearly_and_recovers() -> None:
    async with managed_fleet(
        gen(2),
        max_attempts=2,
        retry_backoff_s=0.01,
        health=HealthConfig(interval_s=0.05, unhealthy_threshold=1),
    ) as (m, fleet):
        await fleet.kill(0)
        await fleet.kill(1)
        res = await asyncio.wait_for(m.generate("q", max_tokens=2), 30)
        assert res.state == "failed"
        assert "unreachable" in (res.error or "") or "no healthy instance" in (res.error or "")
        await fleet.restart(0)
        s0 = m.fleet.get("sim-0")
        assert s0 is not None
        await wait_until(lambda: s0.healthy, "sim-0 healthy again")
        assert (await m.generate("again", max_tokens=2)).state == "completed"


async def test_no_request_lost_or_completed_twice_under_flaky_instances() -> None:
    async with managed_fleet(gen(3), max_attempts=5, retry_backoff_s=0.005, health=NO_PROBES) as (
        m,
        fleet,
    ):
        await set_faults(fleet, 0, error_rate=0.5)
        await set_faults(fleet, 1, disconnect_after_chunks=1)
        done: list[str] = []
        rids = [
            await m.submit_request(RequestMetadata(prompt=f"p{i}", max_tokens=4)) for i in range(60)
        ]
        for r in rids:
            res = await asyncio.wait_for(m.wait(r), 60)
            done.append(res.state)
        assert done == ["completed"] * 60
        met = m.get_metrics()
        assert (met.total_requests, met.completed_requests, met.failed_requests) == (60, 60, 0)
        assert met.retries > 0


async def test_no_retry_once_a_role_only_chat_chunk_reached_the_caller() -> None:
    """Chat streams open with a chunk that carries the role and no text; once it reached
    the caller a retry would duplicate the stream, so the request fails instead."""
    async with managed_fleet(gen(2), routing_strategy="round_robin", health=NO_PROBES) as (
        m,
        fleet,
    ):
        await set_faults(fleet, 0, disconnect_after_chunks=1)
        got: list[dict[str, Any]] = []
        error = None
        try:
            async for chunk in m.stream(messages=[{"role": "user", "content": "hi"}], max_tokens=8):
                got.append(chunk)
        except Exception as exc:
            error = exc
        assert error is not None and len(got) == 1
        assert got[0]["choices"][0]["delta"].get("content") in (None, "")
        failed = [r for r in m.results if r.state == "failed"]
        assert len(failed) == 1 and failed[0].attempts == 1
