"""Noticing that a client went away while its request is queued or running.

After the body is read, the next ASGI `receive()` returns only when the client disconnects
(or the response ends). One watcher task per request awaits it; handlers race their work
against it and cancel the upstream request when the client is gone, so a vanished client
never keeps a vLLM sequence busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was complete."""


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class DisconnectWatcher:
    def __init__(self, receive: Receive) -> None:
        self._task: asyncio.Task[None] = asyncio.ensure_future(_until_disconnect(receive))

    @property
    def disconnected(self) -> bool:
        return self._task.done() and not self._task.cancelled()

    async def race(self, work: Awaitable[T]) -> T:
        """Await `work`; if the client disconnects first, cancel it and raise.

        The watcher's end cancels the work through a done-callback: no `asyncio.wait`
        (its waiter future and the callbacks it adds and removes on both sides, on every
        request), and a future passed as `work` is awaited as it is, without a task."""
        task = asyncio.ensure_future(work)
        gone = self._task
        stopped = False  # the client went away before the work was done

        def on_gone(_: asyncio.Task[None]) -> None:
            nonlocal stopped
            if not task.done():
                stopped = True
                task.cancel()

        if gone.done():
            on_gone(gone)
        else:
            gone.add_done_callback(on_gone)
        try:
            result = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if stopped and not (current is not None and current.cancelling()):
                raise ClientDisconnected() from None
            raise  # this caller is being cancelled (shutdown), not the client gone
        except Exception:
            if stopped:
                raise ClientDisconnected() from None
            raise
        finally:
            gone.remove_done_callback(on_gone)
        if stopped:  # the work ignored its cancellation: the client is gone all the same
            raise ClientDisconnected()
        return result

    def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
