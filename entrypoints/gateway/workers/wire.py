"""Messages between the scheduling process and its workers: length-prefixed pickles over a
Unix socket both ends own (a private 0700 directory, same user), so nothing untrusted is
ever unpickled. pickle is the cheapest encoding of the request objects both sides already
hold (a tuple of builtins and one pydantic model), measured against JSON of the same model.

Worker -> scheduler: ("hello", index, pid), ("submit", token, request, stream),
("first", token), ("outcome", token, run, fields), ("failed", token, run, fields),
("cancel", token, reason), ("observe", endpoint, model, status, priority),
("claim", token, request_id, dead|None) (with --redis-url: claim an `x-request-id` across the
replicas, or take over the claim of `dead`, an owner the worker could not reach).
Scheduler -> worker: ("run", token, run, instance|None, instance_id, extra, stream, relay,
priority), ("abort", token, run), ("done", token, instance_id, attempts, queue_ms, ttft_ms,
e2e_ms) (completed: the worker holds the answer its attempt produced), ("result", token,
result, joined) (anything else, or a resend that joined another request),
("rejected", token, status, message, param, code, headers), ("welcome", replica_id|None)
(the answer to "hello": the replica's id when it shares state, else None),
("claimed", token, Run|HandOver) (`fleetshare.claims`).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 256 * 1024 * 1024  # one embeddings answer can be large; anything more is a bug
_READ_SIZE = 256 * 1024


class Channel:
    """One end of the local socket: whole messages in, whole messages out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._out: list[bytes] = []
        self._in = bytearray()
        self._loop = asyncio.get_running_loop()

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue a message; never blocks. Messages of one event-loop turn leave in one write
        (one system call for many requests under load). A closed peer is ignored here and
        noticed by the reading side."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out += (_HEADER.pack(len(data)), data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self.writer.is_closing():
            self.writer.writelines(out)

    async def receive(self) -> list[tuple[Any, ...]] | None:
        """The messages that have arrived (at least one), or None when the peer closed the
        connection. One read takes every whole message buffered: one wake-up and no
        coroutine per message under load."""
        buf = self._in
        while True:
            messages: list[tuple[Any, ...]] = []
            start = 0
            end = len(buf)
            with memoryview(buf) as view:  # released before the buffer is trimmed
                while end - start >= _HEADER.size:
                    (size,) = _HEADER.unpack_from(view, start)
                    if size > MAX_MESSAGE:
                        raise ConnectionError(f"message of {size} bytes: protocol error")
                    stop = start + _HEADER.size + size
                    if stop > end:
                        break
                    messages.append(pickle.loads(view[start + _HEADER.size : stop]))
                    start = stop
            del buf[:start]
            if messages:
                return messages
            try:
                data = await self.reader.read(_READ_SIZE)
            except ConnectionError:
                return None
            if not data:
                return None
            buf += data

    def close(self) -> None:
        self.writer.close()
