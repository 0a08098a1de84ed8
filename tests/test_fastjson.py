"""fastjson.loads gives what json.loads gives, value or error, for the inputs orjson treats
differently (it refuses them; the fallback parses them as before)."""

from __future__ import annotations

import json
import math

import pytest

from sage_cp_plugin import fastjson

SAME = [
    b'{"choices":[{"index":0,"text":" tok","finish_reason":null}],"usage":null}',
    b'{"a": 1, "a": 2}',  # duplicate key: the last wins in both
    b'{"big": 123456789012345678901234567890}',  # beyond 64 bits: orjson refuses
    b'{"n": 99999999999999999999, "m": -98765432109876543210}',  # 20 digits, beyond 64 bits
    b'{"x": NaN, "y": Infinity, "z": -Infinity}',  # not JSON, but json.loads accepts it
    b'{"s": "\\ud800"}',  # a lone surrogate escape: orjson refuses
    '{"t": "caf\u00e9 \u2603"}'.encode("utf-16"),  # UTF-16 with a BOM: json detects it
    b'{"f": 1e-05, "g": 0.1, "h": -0.0}',
    b"[" * 600 + b"]" * 600,
    b'{"u64": 18446744073709551615, "i64": -9223372036854775808, "digits": "%s"}' % (b"7" * 30),
    b'"just a string"',
]


@pytest.mark.parametrize("data", SAME)
def test_value_is_json_loads_value(data: bytes) -> None:
    got, want = fastjson.loads(data), json.loads(data)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and -0.0 == 0.0
    if isinstance(want, dict) and "x" in want:
        assert math.isnan(got["x"])


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": ',
        b"\xff\xfe\xfd",
        b'{"a": 1} trailing',
        b"",
        b"[1, 2,]",
        b"{'a': 1}",
        b"[" * 5000 + b"]" * 5000,  # beyond orjson's depth limit and Python's stack
    ],
)
def test_error_is_json_loads_error(data: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as want:
        json.loads(data)
    with pytest.raises((ValueError, RecursionError)) as got:
        fastjson.loads(data)
    assert type(got.value) is type(want.value)
    assert str(got.value) == str(want.value)
