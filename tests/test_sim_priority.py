"""The simulated engine honours request priority the way vLLM 0.32 does under
`--scheduling-policy priority`: waiting requests by (priority, arrival), the preemption
victim is the largest (priority, arrival); `fcfs` ignores priority."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from sage_cp_plugin.sim import SimEngine, SimInstanceConfig
from sage_cp_plugin.sim.sequence import SimSequence
from sage_cp_plugin.sim.waiting_queue import WaitingQueue


def words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _finish_order(seqs: dict[str, SimSequence]) -> list[str]:
    order: list[str] = []
    for name, s in seqs.items():
        s.done.add_done_callback(lambda _f, n=name: order.append(n))
    return order


async def _admission_order(policy: str) -> list[str]:
    # One sequence slot: all five wait before the first step and are admitted one by one.
    eng = SimEngine(SimInstanceConfig(time_scale=0, max_num_seqs=1, scheduling_policy=policy))
    seqs = {"first": eng.submit(words("a", 8), 4, priority=9)}
    seqs["low"] = eng.submit(words("b", 8), 4, priority=5)
    seqs["high"] = eng.submit(words("c", 8), 4, priority=0)
    seqs["high_later"] = eng.submit(words("d", 8), 4, priority=0)
    seqs["neg"] = eng.submit(words("e", 8), 4, priority=-3)
    order = _finish_order(seqs)
    await asyncio.gather(*(s.done for s in seqs.values()))
    await eng.stop()
    return order


async def test_priority_policy_admits_by_priority_then_arrival() -> None:
    assert await _admission_order("priority") == ["neg", "high", "high_later", "low", "first"]


async def test_fcfs_policy_ignores_priority() -> None:
    assert await _admission_order("fcfs") == ["first", "low", "high", "high_later", "neg"]


async def _kv_victim(policy: str) -> list[str]:
    # 8 blocks of 16 tokens; two sequences each growing to 5 blocks cannot both fit.
    cfg = SimInstanceConfig(
        time_scale=0, num_kv_blocks=8, enable_prefix_caching=False, scheduling_policy=policy
    )
    eng = SimEngine(cfg)
    seqs = {"batch": eng.submit(words("x", 16), 60, priority=5)}
    seqs["interactive"] = eng.submit(words("y", 16), 60, priority=0)
    order = _finish_order(seqs)
    await asyncio.gather(*(s.done for s in seqs.values()))
    assert eng.counters.preemptions > 0
    await eng.stop()
    return order


async def test_priority_preempts_the_lowest_priority_running_request() -> None:
    # vLLM's victim under priority: max(running, key=(priority, arrival)) -> the batch one,
    # although it was admitted first.
    assert await _kv_victim("priority") == ["interactive", "batch"]


async def test_fcfs_preempts_the_latest_admitted_request() -> None:
    assert await _kv_victim("fcfs") == ["batch", "interactive"]


async def test_waiting_queue_keeps_kv_holders_ahead_of_the_heap() -> None:
    loop_seq = [
        SimSequence(f"r{i}", ["w"], ["o"], float(i), stream=False, priority=p)
        for i, p in enumerate([3, 1, 2])
    ]
    q = WaitingQueue("priority")
    for s in loop_seq:
        q.add(s)
    holder = SimSequence("held", ["w"], ["o"], 9.0, stream=False, priority=7)
    q.prepend_kv_holder(holder)
    assert [s.request_id for s in q] == ["held", "r1", "r2", "r0"]
    q.remove(loop_seq[2])
    assert [q.pop().request_id for _ in range(len(q))] == ["held", "r1", "r0"]


def test_unknown_scheduling_policy_is_rejected() -> None:
    with pytest.raises(ValidationError, match="scheduling_policy"):
        SimInstanceConfig(scheduling_policy="sjf")


async def _until(cond: Callable[[], bool]) -> None:
    """Yield to the event loop until `cond` holds: a condition, not a timed sleep (the
    engine's queues have no change event to wait on)."""
    while not cond():  # noqa: ASYNC110
        await asyncio.sleep(0)


async def _engine_finish_order(policy: str, engine_policy: str) -> list[str]:
    from sage_cp_plugin import RequestMetadata, RequestPriority

    from .simfleet import gen, managed_fleet

    # The coordinator lets everything through (64 slots) to an engine that runs one
    # sequence at a time, so the order is decided by the engine's own queue.
    configs = gen(1, time_scale=0.2, max_num_seqs=1, scheduling_policy=engine_policy)
    async with managed_fleet(
        configs,
        instance_fields={"max_concurrent_requests": 64},
        scheduling_policy=policy,
        policy_options={"aging_s": None} if policy == "priority" else None,
    ) as (manager, fleet):
        engine = fleet.members[0].sim.engine.scheduler

        async def submit(i: int, p: RequestPriority) -> str:
            # r0 decodes long enough (~300 simulated steps) for the others to queue behind it.
            req = RequestMetadata(
                request_id=f"r{i}-{p.name}",
                prompt=f"q{i} " * 20,
                max_tokens=300 if i == 0 else 4,
                priority=p,
            )
            return await manager.submit_request(req)

        ids = [await submit(0, RequestPriority.LOW), await submit(1, RequestPriority.LOW)]
        # r0 runs in the engine and r1 waits there before the critical request arrives.
        await _until(lambda: len(engine.running) == 1 and len(engine.waiting) == 1)
        ids.append(await submit(2, RequestPriority.CRITICAL))
        await _until(lambda: len(engine.waiting) == 2 or not engine.running)
        assert engine.running, "r0 finished before r2 reached the engine: make r0 longer"
        return [(await r).request_id for r in asyncio.as_completed([manager.wait(i) for i in ids])]


async def test_coordinator_passes_the_policy_order_to_a_priority_engine() -> None:
    # r0 reaches the engine first and runs; of the two waiting there, the critical one
    # goes first because the coordinator sent its priority.
    assert await _engine_finish_order("priority", "priority") == ["r0-LOW", "r2-CRITICAL", "r1-LOW"]


async def test_fcfs_engine_and_fifo_policy_keep_arrival_order() -> None:
    assert await _engine_finish_order("priority", "fcfs") == ["r0-LOW", "r1-LOW", "r2-CRITICAL"]
    assert await _engine_finish_order("fifo", "priority") == ["r0-LOW", "r1-LOW", "r2-CRITICAL"]
