"""The publishing side, as vLLM's `ZmqEventPublisher` does it, for the simulator.

Live batches go out on a PUB socket as three frames ``(topic, seq as 8 bytes big-endian,
msgpack payload)``; the last ``buffer_steps`` payloads are kept for a ROUTER replay socket that
answers a request carrying a start sequence number with every buffered batch from there, as
``(seq, payload)`` messages, then ``(-1, b"")``. The port of both is offset by the
data-parallel rank (vLLM's `offset_endpoint_port`).

`StepEvents` batches what one engine step produced: the cache reports events one by one, and
they leave as one batch when control returns to the event loop, as vLLM publishes once per
scheduler step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from sage_cp_plugin.kvevents.events import EventBatch, KVEvent, encode_batch

logger = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)


def offset_endpoint_port(endpoint: str, data_parallel_rank: int) -> str:
    """vLLM's rule: a tcp endpoint's port plus the rank; other transports get a suffix."""
    if data_parallel_rank == 0:
        return endpoint
    if endpoint.startswith("tcp://"):
        base, _, port = endpoint.rpartition(":")
        return f"{base}:{int(port) + data_parallel_rank}"
    return f"{endpoint}_dp{data_parallel_rank}"


class StepEvents:
    """Collects the events of one step and hands them on as one `EventBatch`."""

    def __init__(self, on_batch: Callable[[EventBatch], None]) -> None:
        self._on_batch = on_batch
        self._pending: list[KVEvent] = []
        self._scheduled = False

    def add(self, event: KVEvent) -> None:
        self._pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a synchronous caller): deliver at once
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            events, self._pending = self._pending, []
            self._on_batch(EventBatch(time.time(), events))


class ZmqEventPublisher:
    """PUB + ROUTER replay on ``endpoint`` / ``replay_endpoint`` (tcp://host:port, bound)."""

    def __init__(
        self,
        endpoint: str,
        replay_endpoint: str | None = None,
        *,
        topic: str = "",
        data_parallel_rank: int = 0,
        buffer_steps: int = 10_000,
    ) -> None:
        self.endpoint = offset_endpoint_port(endpoint, data_parallel_rank)
        self.replay_endpoint = (
            offset_endpoint_port(replay_endpoint, data_parallel_rank) if replay_endpoint else None
        )
        self.data_parallel_rank = data_parallel_rank
        self._topic = topic.encode()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._ctx = zmq.Context()
        self._actx = zmq.asyncio.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._replay: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            self.endpoint = self._bind(self._pub, self.endpoint)
            if self.replay_endpoint is not None:
                self._replay = self._actx.socket(zmq.ROUTER)
                self.replay_endpoint = self._bind(self._replay, self.replay_endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"cannot bind KV-event endpoint {self.endpoint}: {exc}") from exc

    @staticmethod
    def _bind(sock: zmq.Socket[Any], endpoint: str) -> str:
        """Bind; port 0 picks a free port. Returns the address actually bound."""
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            sock.bind(endpoint[:-2] + ":*")
            bound = sock.getsockopt(zmq.LAST_ENDPOINT)
            return bound.decode() if isinstance(bound, bytes) else str(bound)
        sock.bind(endpoint)
        return endpoint

    @property
    def published(self) -> int:
        return self._seq

    def start(self) -> None:
        """Serve replay requests (needs a running loop)."""
        if self._replay is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, batch: EventBatch) -> None:
        if batch.data_parallel_rank is None:
            batch = EventBatch(batch.ts, batch.events, self.data_parallel_rank)
        payload = encode_batch(batch)
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        # PUB never blocks: past its high-water mark ZeroMQ drops, and subscribers see a gap.
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload), zmq.NOBLOCK)

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                logger.warning("invalid KV-event replay request: %d frames", len(frames))
                continue
            client, _empty, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await self._replay.send_multipart(
                        (client, b"", seq.to_bytes(8, "big"), payload)
                    )
            await self._replay.send_multipart((client, b"", END_SEQ, b""))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()

    def close(self) -> None:
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()
        self._actx.term()
