"""A streamed chunk as parsed from the instance, together with the bytes it was parsed from.

A streaming client's chunks are parsed once by the attempt (it needs the token times, the
text and the usage) and were then encoded again, unchanged, to be relayed: about 8 us of
`json` encoding per token chunk, more than parsing it. The chunk handed to the relay keeps
the instance's own bytes, so the gateway's relay (entrypoints/gateway/sse.py) writes them as
they came: a pass-through, as vllm-router does. For every other reader (`manager.stream`
callers, the relay's usage filter) it is an ordinary dict.

The contract: nothing between the attempt and the relay changes a chunk (the executor,
the disaggregator, `streaming.relay_chunks` and the `--workers` link only pass it on).
Code that wants to change one makes a new dict (`{**chunk, ...}` is a plain dict, encoded
again by the relay).
"""

from __future__ import annotations

from typing import Any


class RelayedChunk(dict[str, Any]):
    __slots__ = ("raw",)

    def __init__(self, parsed: dict[str, Any], raw: bytes) -> None:
        super().__init__(parsed)
        self.raw = raw  # the JSON payload of the `data:` line, exactly as the instance sent it
