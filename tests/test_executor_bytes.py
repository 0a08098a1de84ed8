"""The executor's own SSE line splitting and its cookie-free clients (issue 16, less CPU).

The upstream here is an httpx.MockTransport because the point is the byte boundaries a
real network can produce (a line cut anywhere, CRLF endings, no final newline), which a
real server on loopback does not produce on demand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.types import ExecutionInstance, RequestMetadata

WORDS = ["Hello", " wörld", " ✓", " end"]


def sse_body(crlf: bool, final_newline: bool) -> bytes:
    nl = "\r\n" if crlf else "\n"
    out = ""
    for i, w in enumerate(WORDS):
        chunk = {"id": "c", "object": "text_completion", "model": "m",
                 "choices": [{"index": 0, "text": w, "finish_reason": None}]}  # fmt: skip
        if i == len(WORDS) - 1:
            chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        out += f"data: {json.dumps(chunk, ensure_ascii=False)}{nl}{nl}"
    out += "data: [DONE]" + (nl if final_newline else "")
    return out.encode()


def upstream(piece: int, crlf: bool, final_newline: bool, seen: list[httpx.Request]):
    body = sse_body(crlf, final_newline)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), piece):
            yield body[i : i + piece]  # cuts lines and multi-byte characters anywhere

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream", "set-cookie": "s=1; Path=/"},
            content=pieces(),
        )

    return handler


async def test_stream_lines_cut_at_any_byte_are_assembled() -> None:
    for piece in (1, 3, 7, 64, 10_000):
        for crlf in (False, True):
            for final_newline in (False, True):
                seen: list[httpx.Request] = []
                handler = upstream(piece, crlf, final_newline, seen)
                ex = ExecutionCoordinator(
                    transport_factory=lambda _i, h=handler: httpx.MockTransport(h)
                )
                inst = ExecutionInstance(instance_id="i", host="127.0.0.1", port=1, model_name="m")
                req = RequestMetadata(request_id="r", prompt="p", model_name="m",
                                      max_tokens=4)  # fmt: skip
                try:
                    out = await ex.run(req, inst)
                    assert out.text == "".join(WORDS), (piece, crlf, final_newline)
                    assert out.completion_tokens == 4 and out.prompt_tokens == 3
                    assert len(out.token_times) == 4
                    # A second request: the instance's Set-Cookie is not sent back.
                    await ex.run(req.model_copy(update={"request_id": "r2"}), inst)
                    assert "cookie" not in seen[-1].headers
                finally:
                    await ex.aclose()


def _token_stream(chunks: list[dict[str, object]], marks: list[float]):
    """An upstream that notes the loop time just before each chunk after the first."""
    import asyncio

    async def pieces() -> AsyncIterator[bytes]:
        for i, c in enumerate(chunks):
            if i:
                marks.append(asyncio.get_running_loop().time())
            yield f"data: {json.dumps(c)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=pieces())  # fmt: skip

    return handler


async def test_first_token_is_the_first_generated_token_even_without_text() -> None:
    # vLLM streams a chunk per generated token even when its detokenizer holds the text back
    # (a lone leading space, part of a UTF-8 character): that chunk is the first token, as
    # vLLM's own TTFT counts it. A chat role header is not a token (some servers send it
    # before the prompt is processed).
    def comp(text: str) -> dict[str, object]:
        return {"object": "text_completion", "choices": [{"index": 0, "text": text}]}

    def chat(delta: dict[str, object]) -> dict[str, object]:
        return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}

    role = chat({"role": "assistant", "content": ""})
    cases = [
        ("completion", [comp(""), comp("Hi"), comp(" there")], 1),
        (
            "chat",
            [role, chat({"content": ""}), chat({"content": "Hi"}), chat({"content": " there"})],
            2,
        ),
    ]
    for kind, chunks, first in cases:
        marks: list[float] = []
        handler = _token_stream(chunks, marks)
        ex = ExecutionCoordinator(transport_factory=lambda _i, h=handler: httpx.MockTransport(h))
        inst = ExecutionInstance(instance_id="i", host="127.0.0.1", port=1, model_name="m")
        user = [{"role": "user", "content": "p"}]
        fields: dict[str, object] = {"prompt": "p"} if kind == "completion" else {"messages": user}
        req = RequestMetadata(request_id="r", model_name="m", max_tokens=3, **fields)
        try:
            out = await ex.run(req, inst, stream=True)
        finally:
            await ex.aclose()
        assert out.text == "Hi there", kind
        assert len(out.token_times) == 3, kind  # every generated token, text or not
        assert out.completion_tokens == 3, kind  # no usage chunk: counted from the chunks
        assert out.first_token_at == out.token_times[0]
        # Taken when the first token's chunk arrived, before the next one was sent.
        assert out.first_token_at < marks[first - 1], kind
        if first > 1:
            assert out.first_token_at > marks[first - 2], kind  # not at the role header


async def test_relayed_chunks_keep_the_instance_bytes() -> None:
    """A streaming caller's chunks go out as the instance sent them (its spacing, its
    characters), not parsed and encoded again; they still read as the parsed dicts."""
    from sage_cp_plugin.entrypoints.gateway.sse import event

    lines = [line[len("data: ") :] for line in sse_body(False, True).split(b"\n\n")]
    sent = [line for line in lines if line.startswith(b"{")]
    for piece in (1, 5, 10_000):
        handler = upstream(piece, crlf=False, final_newline=True, seen=[])
        ex = ExecutionCoordinator(transport_factory=lambda _i, h=handler: httpx.MockTransport(h))
        inst = ExecutionInstance(instance_id="i", host="127.0.0.1", port=1, model_name="m")
        req = RequestMetadata(request_id="r", prompt="p", model_name="m", max_tokens=4)
        got: list[dict[str, object]] = []
        try:
            await ex.run(req, inst, sink=got.append)
        finally:
            await ex.aclose()
        assert [event(c) for c in got] == [b"data: " + s + b"\n\n" for s in sent], piece
        assert got == [json.loads(s) for s in sent]
        # A chunk the gateway makes itself (a plain dict) is still encoded.
        assert event({"a": "ö"}) == 'data: {"a":"ö"}\n\n'.encode()
