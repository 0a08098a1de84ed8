"""The stream parser (moved to its own module in session 14, fed inside the connection's
read callback): the same answer, timings and errors whatever pieces the reads bring."""

from __future__ import annotations

import json

import pytest

from sage_cp_plugin.attempt_outcome import Outcome
from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.stream_parse import StreamParse
from sage_cp_plugin.types import ExecutionInstance, RequestMetadata

INSTANCE = ExecutionInstance(instance_id="i", host="127.0.0.1", port=1, model_name="m")


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def comp(text: str, **extra: object) -> dict[str, object]:
    return {"id": "c", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": None}], **extra}  # fmt: skip


def parser() -> tuple[StreamParse, Outcome, list[dict[str, object]]]:
    out = Outcome()
    relayed: list[dict[str, object]] = []
    req = RequestMetadata(request_id="r", prompt="p", model_name="m", max_tokens=4)
    return StreamParse(req, INSTANCE, out, relayed.append, None), out, relayed


BODY = (
    event(comp("Hello"))
    + event(comp(" big", n=123456789012345678901234))  # beyond 64 bits: json.loads's int
    + event(comp(" world", usage={"prompt_tokens": 2, "completion_tokens": 3}))
    + b"data: [DONE]\n\n"
)


async def test_one_read_or_many_give_the_same_answer() -> None:
    answers = []
    for piece in (1, 5, 40, len(BODY)):
        parse, out, relayed = parser()
        for i in range(0, len(BODY), piece):
            parse.feed(BODY[i : i + piece])
        parse.finish()
        answers.append((out.text, out.completion_tokens, out.response, relayed))
        assert len(out.token_times) == 3
    assert all(a == answers[0] for a in answers)
    assert answers[0][0] == "Hello big world"
    assert answers[0][3][1]["n"] == 123456789012345678901234  # exact, as json.loads reads it


@pytest.mark.parametrize(
    "bad", [b"data: {not json\n\n", b'data: ["a list"]\n\n', b'data: {"a":1},{"b":2}\n\n']
)
async def test_a_bad_chunk_in_a_read_fails_after_the_good_ones_before_it(bad: bytes) -> None:
    parse, _out, relayed = parser()
    with pytest.raises(UpstreamError, match="malformed stream chunk") as err:
        parse.feed(event(comp("a")) + event(comp("b")) + bad + event(comp("c")))
    assert [c["choices"][0]["text"] for c in relayed] == ["a", "b"]  # type: ignore[index]
    assert err.value.body_started  # two chunks were relayed: no retry elsewhere
