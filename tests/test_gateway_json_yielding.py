"""The sliced JSON parse for large bodies (json_yielding.py, body.py): the same object as
`json.loads`, the same refusals, an early stop past an item limit, and the event loop kept
running while a large body is parsed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sage_cp_plugin.entrypoints.gateway.body import parse_json_object, parse_json_object_yielding
from sage_cp_plugin.entrypoints.gateway.errors import GatewayError
from sage_cp_plugin.entrypoints.gateway.json_yielding import TooManyItems

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), _json, max_size=6), st.sampled_from([None, 0, 2]))
def test_the_sliced_parse_gives_what_json_loads_gives(obj: dict[str, Any], indent: Any) -> None:
    raw = json.dumps(obj, indent=indent, ensure_ascii=False).encode()
    assert asyncio.run(parse_json_object_yielding(raw)) == parse_json_object(raw)


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"a":1,}', b'{"a" 1}', b'{"a":1} x', b'{a:1}', b'{"a":[1,2}', b'{"a":NaN}',
     b'{"a":[1,Infinity]}', b"[1,2]", b'"text"', b'{"a":"\\ud800"}', b'{"a":["\\udc00"]}',
     b'{"a":' + b"[" * 100 + b"]" * 100 + b"}", b"{}  \n", b' { "a" : [ ] , "b" : { } } '],
)  # fmt: skip
def test_the_sliced_parse_refuses_what_the_whole_parse_refuses(raw: bytes) -> None:
    try:
        expected: Any = parse_json_object(raw)
    except GatewayError as exc:
        expected = (exc.status, exc.code, exc.param)
    try:
        got: Any = asyncio.run(parse_json_object_yielding(raw))
    except GatewayError as exc:
        got = (exc.status, exc.code, exc.param)
    assert got == expected


async def test_a_large_body_lets_the_loop_run_and_stops_at_the_first_item_too_many() -> None:
    texts = [f"input number {i} with a few words of text" for i in range(100_000)]
    raw = json.dumps({"model": "m", "input": texts}).encode()  # ~4.7 MB
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    body = await parse_json_object_yielding(raw)
    assert body["input"] == texts
    assert ticks > 50  # one yield per 64 KiB: the loop ran all along the parse
    with pytest.raises(GatewayError) as err:
        await parse_json_object_yielding(
            raw,
            item_limits={"input": 2048},
            too_many=lambda exc: GatewayError(400, str(exc), code="too_many_inputs"),
        )
    assert err.value.code == "too_many_inputs"
    assert "'input' holds more than 2048 items" in err.value.message
    task.cancel()


def test_too_many_items_names_the_member() -> None:
    exc = TooManyItems("input", 3)
    assert exc.key == "input" and "more than 3" in str(exc)
