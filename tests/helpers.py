"""Builders shared by the unit tests: instance states and queued requests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.fleetshare.store import InMemoryFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.pending import PendingQueue, QueuedRequest
from sage_cp_plugin.policies.base import SchedulingPolicy, make_item
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.types import ExecutionInstance, RequestMetadata, RequestStatus


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
    condition: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str],
    timeout_s: float = 30.0,
) -> None:
    """Wait for ``condition()`` (a bool, or an awaitable one such as an HTTP probe) to hold,
    checked every few ms, or fail naming ``what`` (a callable is called at the timeout, so
    that the message shows the state that failed, not the state when the wait began).

    For state that offers no event to wait on (another server's queue, a fleet member's
    counters). The timeout only bounds a hung test; it never decides a result.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await _holds(condition):
        if loop.time() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s} s waiting for {said}")
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


class OpenLoopClients:
    """`clients` open-loop clients: each active one starts ``send()`` every ``period_s``
    whether or not its last request was answered (pacing, not synchronisation), so the
    offered load is set by ``active`` and not by how fast this machine answers (a closed loop
    offers less on a busy machine). ``results`` holds each request's return value, or the
    exception it raised (a refused request is a lost one). Use as ``async with``; leaving
    stops the clients and waits for every request sent."""

    def __init__(
        self, send: Callable[[], Awaitable[object]], clients: int, period_s: float
    ) -> None:
        self.send, self.clients, self.period_s = send, clients, period_s
        self.active = 0
        self.results: list[object] = []
        self._stop = asyncio.Event()
        self._sent: list[asyncio.Task[None]] = []
        self._loops: list[asyncio.Task[None]] = []

    async def _one(self) -> None:
        try:
            self.results.append(await self.send())
        except Exception as exc:
            self.results.append(exc)

    async def _client(self, i: int) -> None:
        while not self._stop.is_set():
            if i < self.active:
                self._sent.append(asyncio.create_task(self._one()))
            await asyncio.sleep(self.period_s)

    async def __aenter__(self) -> OpenLoopClients:
        self._loops = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._loops)
        await asyncio.gather(*self._sent)


def lost_after_first_answer(results: list[object]) -> tuple[int, list[object]]:
    """(completed, lost) of `OpenLoopClients.results` for a fleet that starts empty: requests
    sent before the first completed one may be refused (nothing serves yet); after it, an
    exception or a result that did not complete is a lost request."""

    def completed(r: object) -> bool:
        return getattr(r, "status", None) == RequestStatus.COMPLETED

    first = next((i for i, r in enumerate(results) if completed(r)), len(results))
    return sum(map(completed, results)), [r for r in results[first:] if not completed(r)]


async def sharing_replicas(
    n: int = 2, ttl_s: float = 3.0
) -> tuple[list[ControlPlaneManager], list[FleetShare]]:
    """`n` replica managers (`replica_manager`) sharing state through one in-memory store
    (messages delivered 1 ms after sending), their `FleetShare`s started: (managers, shares)."""
    store = InMemoryFleetStateStore(delivery_delay_s=0.001)
    managers = [replica_manager() for _ in range(n)]
    shares = [FleetShare(m, store, f"r{i}", load_ttl_s=ttl_s) for i, m in enumerate(managers)]
    for sh in shares:
        await sh.start()
    return managers, shares


def replica_manager() -> ControlPlaneManager:
    """A manager over one instance (fifo, nothing started): one replica of the control plane
    in the fleet-sharing tests."""
    m = ControlPlaneManager(scheduling_policy="fifo")
    m.register_instance(
        ExecutionInstance(
            instance_id="a", host="127.0.0.1", port=9, model_name="m", max_concurrent_requests=4
        )
    )
    return m
