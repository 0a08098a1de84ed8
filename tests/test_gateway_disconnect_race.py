"""`DisconnectWatcher.race`: the work's answer, or ClientDisconnected once the client is
gone (the work cancelled), or the caller's own cancellation passed on (the work cancelled).
The ASGI `receive` here is a queue the test feeds: these are the only messages an app gets
after the body, and the point is their order against the work's end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sage_cp_plugin.entrypoints.gateway.disconnect import ClientDisconnected, DisconnectWatcher


def _receive() -> tuple[asyncio.Queue[dict[str, Any]], Any]:
    q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    return q, q.get


async def test_answer_before_disconnect_is_returned() -> None:
    _, receive = _receive()
    w = DisconnectWatcher(receive)
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(fut.set_result, 7)
    assert await w.race(fut) == 7
    assert await w.race(asyncio.sleep(0, result="coroutine")) == "coroutine"
    w.close()


async def test_disconnect_cancels_the_work_and_raises() -> None:
    q, receive = _receive()
    w = DisconnectWatcher(receive)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    race = asyncio.ensure_future(w.race(work()))
    await started.wait()
    q.put_nowait({"type": "http.disconnect"})
    with pytest.raises(ClientDisconnected):
        await race
    assert cancelled.is_set() and w.disconnected
    # Already gone: new work is cancelled at once, ClientDisconnected again.
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    with pytest.raises(ClientDisconnected):
        await w.race(fut)
    assert fut.cancelled()


async def test_work_that_swallows_cancellation_still_reports_the_disconnect() -> None:
    q, receive = _receive()
    w = DisconnectWatcher(receive)
    started = asyncio.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "finished anyway"
        return "never"

    race = asyncio.ensure_future(w.race(stubborn()))
    await started.wait()
    q.put_nowait({"type": "http.disconnect"})
    with pytest.raises(ClientDisconnected):
        await race


async def test_callers_cancellation_is_not_a_disconnect() -> None:
    _, receive = _receive()
    w = DisconnectWatcher(receive)
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    race = asyncio.ensure_future(w.race(fut))
    await asyncio.sleep(0)
    race.cancel()
    with pytest.raises(asyncio.CancelledError):
        await race
    assert fut.cancelled() and not w.disconnected
    w.close()


async def test_work_error_passes_through() -> None:
    _, receive = _receive()
    w = DisconnectWatcher(receive)

    async def fails() -> None:
        raise ValueError("upstream said no")

    with pytest.raises(ValueError, match="upstream said no"):
        await w.race(fails())
    w.close()
