"""Subscribe to one instance's KV-event publisher(s) and keep the index in step.

One SUB socket per data-parallel rank (vLLM offsets the port by the rank), each feeding its
own `EventStream`. A gap in the sequence numbers triggers a replay request on a DEALER
socket to the publisher's ROUTER endpoint; no answer within ``replay_timeout_s`` (or no
replay endpoint) falls back to forgetting the source (see `stream.py`). ZeroMQ reconnects a
SUB socket by itself when the engine restarts; the restart shows as sequence numbers
starting again from 0, which the stream handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio

from sage_cp_plugin.kvevents.events import EventBatch, EventDecodeError, decode_batch
from sage_cp_plugin.kvevents.index import BlockIndex
from sage_cp_plugin.kvevents.publisher import offset_endpoint_port
from sage_cp_plugin.kvevents.stream import EventStream

logger = logging.getLogger(__name__)


def connect_address(endpoint: str, host: str) -> str:
    """vLLM's config names the bind address (``tcp://*:5557``); connect to the host instead."""
    if endpoint.startswith("tcp://*:"):
        h = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"tcp://{h}:{endpoint.rsplit(':', 1)[1]}"
    return endpoint


class KVEventSubscriber:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        index: BlockIndex,
        instance_id: str,
        endpoint: str,
        *,
        replay_endpoint: str | None = None,
        topic: str = "",
        data_parallel_size: int = 1,
        replay_timeout_s: float = 2.0,
        on_batch: Callable[[str], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.index = index
        self.instance_id = instance_id
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.topic = topic.encode()
        self.replay_timeout_s = replay_timeout_s
        self.on_batch = on_batch
        self.streams = [EventStream(index, (instance_id, r)) for r in range(data_parallel_size)]
        self.decode_errors = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._run_rank(s) for s in self.streams))

    async def _run_rank(self, stream: EventStream) -> None:
        rank = stream.source[1]
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        sub.connect(offset_endpoint_port(self.endpoint, rank))
        try:
            # What the engine cached before we connected: its replay buffer, from the start.
            history = await self._replay(rank, 0)
            if history:
                stream.on_replay(0, history)
                if self.on_batch is not None:
                    self.on_batch(self.instance_id)
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 3:
                    self.decode_errors += 1
                    continue
                _topic, seq_bytes, payload = frames
                seq = int.from_bytes(seq_bytes, "big")
                try:
                    batch = decode_batch(payload)
                except EventDecodeError as exc:
                    # Not applied: the stream sees the next batch as a gap and replays this one.
                    self.decode_errors += 1
                    logger.warning("KV events of %s: %s", self.instance_id, exc)
                    continue
                await self._deliver(stream, seq, batch)
        finally:
            sub.close(linger=0)
            self.index.clear_source(stream.source)

    async def _deliver(self, stream: EventStream, seq: int, batch: EventBatch) -> None:
        missing = stream.on_live(seq, batch)
        if missing is not None:
            replayed = await self._replay(stream.source[1], missing)
            if replayed is None:
                stream.replay_failed(seq)
            else:
                stream.on_replay(missing, replayed)
            if stream.on_live(seq, batch) is not None:
                # The replay did not reach this batch: give up on the gap and go on from here.
                stream.replay_failed(seq)
                stream.on_live(seq, batch)
            logger.info(
                "KV events of %s rank %d: gap at %d (%s)",
                self.instance_id,
                stream.source[1],
                missing,
                "replayed" if replayed else "cleared",
            )
        if self.on_batch is not None:
            self.on_batch(self.instance_id)

    async def _replay(self, rank: int, start: int) -> list[tuple[int, EventBatch]] | None:
        if self.replay_endpoint is None:
            return None
        sock = self.ctx.socket(zmq.DEALER)
        sock.connect(offset_endpoint_port(self.replay_endpoint, rank))
        out: list[tuple[int, EventBatch]] = []
        try:
            await sock.send_multipart((b"", start.to_bytes(8, "big")))
            while True:
                frames = await asyncio.wait_for(sock.recv_multipart(), self.replay_timeout_s)
                if len(frames) != 3:
                    return None
                _empty, seq_bytes, payload = frames
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                if seq < 0:
                    return out
                try:
                    out.append((seq, decode_batch(payload)))
                except EventDecodeError:
                    self.decode_errors += 1
                    return out  # a contiguous prefix is still good
        except TimeoutError:
            logger.warning("KV-event replay from %s timed out", self.replay_endpoint)
            return None
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.close(linger=0)
