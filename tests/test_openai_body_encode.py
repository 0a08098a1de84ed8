"""encode_body writes with orjson when that gives the standard encoder's bytes, and falls
back to the standard encoder (its bytes, its errors) for everything else."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest

from sage_cp_plugin.errors import InvalidRequestBodyError
from sage_cp_plugin.openai_body import encode_body

_STD = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class Color(enum.Enum):
    RED = 1


class Name(enum.StrEnum):
    A = "a"


BODIES: list[dict[str, Any]] = [
    {"model": "m", "prompt": "abc def " * 500, "max_tokens": 40, "temperature": 0.7},
    {"prompt": 'caf\u00e9 \u2603 \U0001f600 \u2028 \x00\x1f\x7f "q" \\ /', "top_p": 0.95},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "n": None},
    {"f": [1e-05, 1e-4, 1e16, 1.5e300, -0.0, 5e-324, 1 / 3], "b": [True, False]},
    {"big": 2**64, "neg": -(2**63) - 1, "u64": 2**64 - 1, "i64": -(2**63)},
    {1: "int key", "t": (1, 2)},  # the standard encoder turns both into JSON
    {"enum": Name.A, "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
    {"d": [[] for _ in range(3)] * 40, "nested": {"x": {"y": {"z": 1.25}}}},
]


@pytest.mark.parametrize("body", BODIES)
def test_bytes_are_the_standard_encoders(body: dict[str, Any]) -> None:
    assert encode_body(body) == _STD(body).encode("utf-8")


@pytest.mark.parametrize(
    "body",
    [
        {"temperature": math.nan},  # orjson would write null
        {"x": [math.inf]},
        {"prompt": "\ud800"},  # a lone surrogate
        {"c": Color.RED},  # orjson would write 1
        {"o": object()},
    ],
)
def test_what_the_standard_encoder_refuses_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestBodyError):
        encode_body(body)
