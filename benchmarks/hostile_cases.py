"""The 75 hand-made hostile requests of issue 11, as data, so the figures are reproducible.

Each case is one HTTP request a hostile or buggy client might send: malformed JSON, wrong
types, bad encodings, deep nesting, huge or empty inputs, bad headers, wrong methods and
paths, and malformed HTTP below the application (sent on a raw socket). `run_cases` sends
them all to a gateway and returns (case, status, JSON error?) rows; the test suite and
`benchmarks/bench_hostile.py` both use it. Expected: no status >= 500, every error JSON.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

GEN, EMB = "sim-model", "sim-embed"
CHAT, COMP, EMBED = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


@dataclass(frozen=True)
class Case:
    name: str
    path: str = CHAT
    body: bytes | None = None
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is on a socket (malformed HTTP)


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _chat(**extra: object) -> bytes:
    return _j({"model": GEN, "messages": [{"role": "user", "content": "hi"}], **extra})


def _nested(depth: int) -> bytes:
    return b'{"model":"sim-model","prompt":"x","extra":' + b"[" * depth + b"]" * depth + b"}"


def _cases() -> list[Case]:
    c: list[Case] = [
        # -- JSON itself
        Case("not json", body=b"{not json"),
        Case("empty body", body=b""),
        Case("json array", body=b"[1,2]"),
        Case("json string", body=b'"hello"'),
        Case("json null", body=b"null"),
        Case("truncated json", body=_chat()[:-3]),
        Case("NaN literal", path=COMP, body=b'{"model":"sim-model","prompt":"x","seed":NaN}'),
        Case("Infinity temperature", body=_chat()[:-1] + b',"temperature":Infinity}'),
        Case("lone surrogate", body=b'{"model":"sim-model","messages":[{"role":"user","content":"\\ud800"}]}'),
        Case("lone surrogate in extra", path=COMP, body=b'{"model":"sim-model","prompt":"x","user":"\\udfff"}'),
        Case("raw invalid utf-8", body=b'{"model":"sim-model","messages":[{"role":"user","content":"\xff\xfe"}]}'),
        Case("utf-16 body", body=_chat().decode().encode("utf-16")),
        Case("nesting 100", path=COMP, body=_nested(100)),
        Case("nesting 5000", path=COMP, body=_nested(5000)),
        Case("nesting 100000", path=COMP, body=_nested(100_000)),
        Case("text/plain body", body=_chat(), headers={"content-type": "text/plain"}),
        Case("form body", body=b"model=sim-model", headers={"content-type": "application/x-www-form-urlencoded"}),
        # -- chat fields
        Case("no model", body=_j({"messages": [{"role": "user", "content": "hi"}]})),
        Case("model number", body=_j({"model": 7, "messages": [{"role": "user", "content": "hi"}]})),
        Case("model empty", body=_j({"model": "", "messages": [{"role": "user", "content": "hi"}]})),
        Case("unknown model", body=_j({"model": "nope", "messages": [{"role": "user", "content": "hi"}]})),
        Case("no messages", body=_j({"model": GEN})),
        Case("messages string", body=_j({"model": GEN, "messages": "hi"})),
        Case("messages empty", body=_j({"model": GEN, "messages": []})),
        Case("message no role", body=_j({"model": GEN, "messages": [{"content": "hi"}]})),
        Case("role wizard", body=_j({"model": GEN, "messages": [{"role": "wizard", "content": "hi"}]})),
        Case("content number", body=_j({"model": GEN, "messages": [{"role": "user", "content": 5}]})),
        Case("user no content", body=_j({"model": GEN, "messages": [{"role": "user"}]})),
        Case("message not object", body=_j({"model": GEN, "messages": ["hi"]})),
        Case("content part no type", body=_j({"model": GEN, "messages": [{"role": "user", "content": [{"text": "x"}]}]})),
        Case("stream yes", body=_chat(stream="yes")),
        Case("stream 1", body=_chat(stream=1)),
        Case("stream_options string", body=_chat(stream=True, stream_options="bad")),
        Case("stream_options list", body=_chat(stream=True, stream_options=[1])),
        Case("stream_options without stream", body=_chat(stream_options={"include_usage": True})),
        Case("include_usage string", body=_chat(stream=True, stream_options={"include_usage": "yes"})),
        Case("max_tokens string", body=_chat(max_tokens="many")),
        Case("max_tokens zero", body=_chat(max_tokens=0)),
        Case("max_tokens negative", body=_chat(max_tokens=-5)),
        Case("max_tokens float", body=_chat(max_tokens=1.5)),
        Case("max_tokens huge", body=_chat(max_tokens=10**30)),
        Case("temperature negative", body=_chat(temperature=-1)),
        Case("temperature string", body=_chat(temperature="hot")),
        Case("top_p zero", body=_chat(top_p=0)),
        Case("top_p two", body=_chat(top_p=2)),
        Case("n zero", body=_chat(n=0)),
        Case("stop number", body=_chat(stop=5)),
        Case("priority unknown", body=_chat(priority="urgent")),
        Case("ttft slo negative", body=_chat(ttft_slo_ms=-5)),
        Case("deadline string", body=_chat(slo_deadline_ms="soon")),
        Case("cost budget zero", body=_chat(cost_budget=0)),
        Case("max_completion_tokens zero", body=_chat(max_completion_tokens=0)),
        # -- completions
        Case("prompt object", path=COMP, body=_j({"model": GEN, "prompt": {"a": 1}})),
        Case("prompt list of two", path=COMP, body=_j({"model": GEN, "prompt": ["a", "b"]})),
        Case("prompt token ids", path=COMP, body=_j({"model": GEN, "prompt": [1, 2, 3]})),
        Case("prompt empty list", path=COMP, body=_j({"model": GEN, "prompt": []})),
        # -- embeddings
        Case("input empty list", path=EMBED, body=_j({"model": EMB, "input": []})),
        Case("input empty string", path=EMBED, body=_j({"model": EMB, "input": ""})),
        Case("input numbers", path=EMBED, body=_j({"model": EMB, "input": [1, 2, 3]})),
        Case("input null", path=EMBED, body=_j({"model": EMB, "input": None})),
        Case("embeddings stream", path=EMBED, body=_j({"model": EMB, "input": "x", "stream": True})),
        Case("encoding hex", path=EMBED, body=_j({"model": EMB, "input": "x", "encoding_format": "hex"})),
        Case("100k inputs", path=EMBED, body=_j({"model": EMB, "input": ["word"] * 100_000})),
        Case("generation model for embeddings", path=EMBED, body=_j({"model": GEN, "input": "x"})),
        # -- headers
        Case("x-sage-priority bad", body=_chat(), headers={"x-sage-priority": "urgent"}),
        Case("x-sage-slo-ttft-ms text", body=_chat(), headers={"x-sage-slo-ttft-ms": "soon"}),
        Case("x-sage-deadline-ms negative", body=_chat(), headers={"x-sage-deadline-ms": "-1"}),
        Case("x-sage-cost-budget inf", body=_chat(), headers={"x-sage-cost-budget": "inf"}),
        Case("bad content-length", raw=b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n"),
        Case("body over limit", body=b" " * (9 * 1024 * 1024)),
        # -- routes and methods
        Case("unknown path", path="/v1/nothing", body=_chat()),
        Case("GET on chat", method="GET"),
        Case("DELETE on models", path="/v1/models", method="DELETE"),
        # -- HTTP below the application
        Case("garbage request line", raw=b"\x00\x01\x02 garbage\r\n\r\n"),
        Case("header too large", raw=b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n"),
    ]  # fmt: skip
    return c


CASES: list[Case] = _cases()
assert len(CASES) == 75, len(CASES)


@dataclass
class Outcome:
    case: str
    status: int
    json_error: bool  # 4xx/5xx with an OpenAI-format JSON error body (or 2xx JSON)
    body: str


def _is_json_error(ctype: str, text: str) -> bool:
    if "json" not in ctype:
        return False
    try:
        data = json.loads(text)
    except ValueError:
        return False
    err = data.get("error") if isinstance(data, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str)


async def _raw(url: str, payload: bytes) -> tuple[int, str, str]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    ctype = next(
        (ln.split(":", 1)[1] for ln in lines if ln.lower().startswith("content-type:")), ""
    )
    return status, ctype, body.decode("utf-8", "replace")


async def run_case(client: httpx.AsyncClient, url: str, case: Case) -> Outcome:
    if case.raw is not None:
        status, ctype, text = await _raw(url, case.raw)
    else:
        headers = {"content-type": "application/json", **case.headers}
        resp = await client.request(
            case.method, url + case.path, content=case.body, headers=headers
        )
        status, ctype, text = resp.status_code, resp.headers.get("content-type", ""), resp.text
    ok = status < 400 or _is_json_error(ctype, text)
    return Outcome(case.name, status, ok, text[:300])


async def run_cases(url: str) -> list[Outcome]:
    async with httpx.AsyncClient(timeout=60) as client:
        return [await run_case(client, url, case) for case in CASES]
