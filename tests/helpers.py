"""Builders shared by the unit tests: instance states and queued requests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy, make_item
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import ExecutionInstance, RequestMetadata


def state(
    iid: str,
    *,
    in_flight: int = 0,
    cap: int = 10,
    model: str = "m",
    **inst_fields: object,
) -> InstanceState:
    inst = ExecutionInstance(
        instance_id=iid, port=8000, model_name=model, max_concurrent_requests=cap, **inst_fields
    )
    return InstanceState(instance=inst, in_flight=in_flight)


def fleet(*states: InstanceState, now: float = 0.0) -> FleetSnapshot:
    return FleetSnapshot({s.instance_id: s for s in states}, now=now)


def item(seq: int, now: float = 0.0, **fields: object) -> QueuedRequest:
    fields.setdefault("prompt", f"request {seq}")
    return make_item(RequestMetadata(request_id=f"r{seq}", **fields), now=now, seq=seq)  # type: ignore[arg-type]


def order(policy: SchedulingPolicy, items: list[QueuedRequest]) -> list[str]:
    """The order in which `policy` releases `items` from the pending queue."""
    q = PendingQueue(capacity=10_000)
    for it in items:
        it.key = policy.key(it)
        q.push(it)
    out: list[str] = []
    while (nxt := q.pop(q.pools()[0] if q.pools() else (None, False, False))) is not None:
        out.append(nxt.request_id)
    return out


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 30.0
) -> None:
    """Wait for ``condition()`` (a bool, or an awaitable one such as an HTTP probe) to hold,
    checked every few ms, or fail naming ``what``.

    For state that offers no event to wait on (another server's queue, a fleet member's
    counters). The timeout only bounds a hung test; it never decides a result.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await _holds(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = condition()
    return bool(await result) if inspect.isawaitable(result) else bool(result)


def wait_until_sync(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """`wait_until` for a test thread (SAGE jobs, subprocesses) that has no event loop."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)
