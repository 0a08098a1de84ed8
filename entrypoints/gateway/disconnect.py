"""Noticing that a client went away while its request is queued or running.

After the body is read, the next ASGI `receive()` returns only when the client disconnects
(or the response ends). One watcher task per request awaits it; handlers race their work
against it and cancel the upstream request when the client is gone, so a vanished client
never keeps a vLLM sequence busy.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        """Await `work`; if the client disconnects first, cancel it and raise."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, self._task), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientDisconnected()

    def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
