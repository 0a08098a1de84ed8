"""Parsing a large JSON object on the event loop in slices, yielding between them.

`json.loads` on a multi-megabyte body holds the GIL from start to end (a worker thread does
not help: the C scanner never lets the loop's thread in), so one upload stalls every other
client for as long as the parse takes. Here the top-level object is walked by hand and each
member, and each element of a member that is an array, is decoded by the standard library's
own C scanner (`JSONDecoder.raw_decode`): the result is the same object `json.loads` gives,
built in pieces with a yield to the loop every `YIELD_CHARS` characters.

It also stops early: an array member with a limit (`'input'` of an embeddings request) raises
`TooManyItems` at the first element past it, so a 100k-input request is refused after
reading a few thousand inputs rather than all of them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

# About a millisecond of decoding between yields on a quiet core.
YIELD_CHARS = 64 * 1024
_WS = re.compile(r"[ \t\n\r]*")

# Called with (key or element path, value, its text) for each member and array element as
# it is decoded: the body's own checks (depth, encoding) run piece by piece too.
Check = Callable[[str, Any, str], None]


class TooManyItems(ValueError):
    def __init__(self, key: str, limit: int) -> None:
        super().__init__(f"'{key}' holds more than {limit} items")
        self.key = key
        self.limit = limit


class _Reader:
    def __init__(self, text: str, decoder: json.JSONDecoder, check: Check) -> None:
        self.text = text
        self.scan = decoder.raw_decode
        self.check = check
        self.last_yield = 0

    def ws(self, pos: int) -> int:
        m = _WS.match(self.text, pos)
        assert m is not None  # the pattern matches the empty string
        return m.end()

    def expect(self, pos: int, chars: str, what: str) -> str:
        c = self.text[pos : pos + 1]
        if c not in chars or not c:
            raise json.JSONDecodeError(what, self.text, pos)
        return c

    def value(self, pos: int, path: str) -> tuple[Any, int]:
        value, end = self.scan(self.text, pos)
        self.check(path, value, self.text[pos:end])
        return value, end

    async def pause(self, pos: int) -> None:
        if pos - self.last_yield >= YIELD_CHARS:
            self.last_yield = pos
            await asyncio.sleep(0)

    async def array(self, pos: int, key: str, limit: int | None) -> tuple[list[Any], int]:
        items: list[Any] = []
        pos = self.ws(pos + 1)
        if self.text[pos : pos + 1] == "]":
            return items, pos + 1
        while True:
            value, pos = self.value(pos, f"{key}[{len(items)}]")
            items.append(value)
            if limit is not None and len(items) > limit:
                raise TooManyItems(key, limit)
            await self.pause(pos)
            pos = self.ws(pos)
            if self.expect(pos, ",]", "Expecting ',' delimiter") == "]":
                return items, pos + 1
            pos = self.ws(pos + 1)


async def loads_object(
    text: str,
    decoder: json.JSONDecoder,
    check: Check,
    item_limits: Mapping[str, int] | None = None,
) -> Any:
    """`decoder.decode(text)`, yielding to the loop as it goes (see the module doc)."""
    r = _Reader(text, decoder, check)
    pos = r.ws(0)
    if text[pos : pos + 1] != "{":
        value = decoder.decode(text)  # not an object: the caller refuses it, whatever it is
        return value
    out: dict[str, Any] = {}
    pos = r.ws(pos + 1)
    if text[pos : pos + 1] == "}":
        pos += 1
    else:
        while True:
            r.expect(pos, '"', "Expecting property name enclosed in double quotes")
            key, pos = r.scan(text, pos)
            pos = r.ws(pos)
            r.expect(pos, ":", "Expecting ':' delimiter")
            pos = r.ws(pos + 1)
            if text[pos : pos + 1] == "[":
                value, pos = await r.array(pos, key, (item_limits or {}).get(key))
            else:
                value, pos = r.value(pos, key)
            out[key] = value
            await r.pause(pos)
            pos = r.ws(pos)
            if r.expect(pos, ",}", "Expecting ',' delimiter") == "}":
                pos += 1
                break
            pos = r.ws(pos + 1)
    if r.ws(pos) != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)
    return out
