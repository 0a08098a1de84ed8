"""Reading a request body: size limit first, then JSON.

The limit is enforced while reading, not after: a client announcing (or streaming) more than
`max_bytes` gets 413 without the gateway holding the whole body in memory. The body must
then be a JSON object in UTF-8, without NaN/Infinity (not JSON), lone surrogates (not
Unicode) or nesting deeper than `MAX_DEPTH`: each of those would otherwise fail later,
where the request can no longer be told apart from a broken instance. Large bodies are
parsed in a worker thread so one upload does not stall every other client.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import Request

from .errors import GatewayError


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise GatewayError(400, f"invalid Content-Length header {declared!r}") from None
        if size > max_bytes:
            raise _too_large(size, max_bytes)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(total, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"request body of {size} bytes exceeds the limit of {limit} bytes "
        "(raise it with --max-body-bytes)",
        code="body_too_large",
    )


# OpenAI bodies nest a few levels (tool schemas a dozen or so); 64 leaves room for any real
# one and stays far from Python's recursion limit in every later encode.
MAX_DEPTH = 64
# Bodies above this are parsed off the event loop.
THREAD_PARSE_BYTES = 256 * 1024
# A \uD800-\uDFFF escape: a surrogate, paired (fine) or lone (not Unicode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _invalid(message: str, code: str = "invalid_json") -> GatewayError:
    return GatewayError(400, message, code=code)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_depth(data: Any) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _invalid(f"request body nests deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _lone_surrogate_path(node: Any, path: str) -> str | None:
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(node, dict):
        for key, value in node.items():
            found = _lone_surrogate_path(key, path) or _lone_surrogate_path(
                value, f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _lone_surrogate_path(value, f"{path}[{i}]")
            if found:
                return found
    return None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict, or a 400 GatewayError saying what is wrong with it."""
    if not raw:
        raise _invalid("request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"request body is not UTF-8: {exc}") from None
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise _invalid(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise _invalid(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _invalid(f"request body must be a JSON object, got {type(data).__name__}")
    _check_depth(data)
    if _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate_path(data, "")
        if where is not None:
            raise GatewayError(
                400,
                f"'{where}' holds a lone UTF-16 surrogate escape, which is not Unicode text",
                param=where,
                code="invalid_encoding",
            )
    return data


def check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type")
    if ctype is None:
        return  # curl without -H: the body is read as JSON, as vLLM does
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    raise GatewayError(
        415,
        f"Content-Type {media or ctype!r} is not supported; send 'application/json'",
        code="unsupported_media_type",
    )


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    check_content_type(request)
    raw = await read_body(request, max_bytes)
    if len(raw) > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(parse_json_object, raw)
    return parse_json_object(raw)
