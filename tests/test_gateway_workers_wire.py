"""The framing of `serve --workers N`'s local socket: whole messages, in order, however the
bytes arrive; a closed peer and a corrupt length are noticed."""

from __future__ import annotations

import asyncio
import pickle
import struct

import pytest
from sage_cp_plugin.entrypoints.gateway.workers.wire import Channel


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def is_closing(self) -> bool:
        return False

    def writelines(self, parts: list[bytes]) -> None:
        self.data += b"".join(parts)


def _frames(messages: list[tuple[object, ...]]) -> bytes:
    return b"".join(struct.pack("!I", len(p)) + p for p in map(pickle.dumps, messages))


@pytest.mark.parametrize("piece", [1, 7, 4096])
async def test_messages_survive_any_split_of_the_byte_stream(piece: int) -> None:
    messages = [("outcome", i, "x" * (i * 37)) for i in range(60)]
    data = _frames(messages)
    reader = asyncio.StreamReader()
    channel = Channel(reader, _Writer())  # type: ignore[arg-type]

    async def feed() -> None:
        for i in range(0, len(data), piece):
            reader.feed_data(data[i : i + piece])
            await asyncio.sleep(0)  # let the receiver see partial frames
        reader.feed_eof()

    feeding = asyncio.create_task(feed())
    got: list[tuple[object, ...]] = []
    while (batch := await channel.receive()) is not None:
        got += batch
    await feeding
    assert got == messages


async def test_sent_messages_leave_in_one_write_per_loop_turn_and_read_back() -> None:
    writer = _Writer()
    sender = Channel(asyncio.StreamReader(), writer)  # type: ignore[arg-type]
    for i in range(5):
        sender.send(("first", i))
    assert writer.data == b""  # queued until the turn ends
    await asyncio.sleep(0)
    reader = asyncio.StreamReader()
    reader.feed_data(bytes(writer.data))
    reader.feed_eof()
    receiver = Channel(reader, _Writer())  # type: ignore[arg-type]
    assert await receiver.receive() == [("first", i) for i in range(5)]
    assert await receiver.receive() is None


async def test_a_corrupt_length_is_a_protocol_error() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack("!I", 2**31))
    channel = Channel(reader, _Writer())  # type: ignore[arg-type]
    with pytest.raises(ConnectionError, match="protocol error"):
        await channel.receive()
