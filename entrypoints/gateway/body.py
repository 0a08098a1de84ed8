"""Reading a request body: size limit first, then JSON.

The limit is enforced while reading, not after: a client announcing (or streaming) more than
`max_bytes` gets 413 without the gateway holding the whole body in memory. The body must
then be a JSON object in UTF-8, without NaN/Infinity (not JSON), lone surrogates (not
Unicode) or nesting deeper than `MAX_DEPTH`: each of those would otherwise fail later,
where the request can no longer be told apart from a broken instance. Large bodies are
parsed on the loop in slices with yields between them (json_yielding.py; a worker thread
would not help, the parser holds the GIL), so one upload does not stall every other client,
and an array over its item limit stops the parse at the first item too many.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from .errors import GatewayError
from .json_yielding import TooManyItems, loads_object


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
# Bodies above this are parsed in slices (json_yielding.py); below, at once (a few ms).
YIELDING_PARSE_BYTES = 256 * 1024
# A \uD800-\uDFFF escape: a surrogate, paired (fine) or lone (not Unicode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")


def _invalid(message: str, code: str = "invalid_json") -> GatewayError:
    return GatewayError(400, message, code=code)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_depth(data: Any, depth: int = 1) -> None:
    stack: list[tuple[Any, int]] = [(data, depth)]
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


def _decode(raw: bytes) -> str:
    if not raw:
        raise _invalid("request body is empty; expected a JSON object")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"request body is not UTF-8: {exc}") from None


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _invalid(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _lone_surrogate(node: Any, path: str) -> None:
    where = _lone_surrogate_path(node, path)
    if where is not None:
        raise GatewayError(
            400,
            f"'{where}' holds a lone UTF-16 surrogate escape, which is not Unicode text",
            param=where,
            code="invalid_encoding",
        )


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict, or a 400 GatewayError saying what is wrong with it."""
    text = _decode(raw)
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise _invalid(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise _invalid(f"request body is not valid JSON: {exc}") from None
    data = _object(data)
    _check_depth(data)
    if _SURROGATE_ESCAPE.search(raw):
        _lone_surrogate(data, "")
    return data


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _check_piece(path: str, value: Any, text: str) -> None:
    """The checks of `parse_json_object`, on one member or array element as it is read."""
    if isinstance(value, dict | list):
        _check_depth(value, 3 if path.endswith("]") else 2)
    if _SURROGATE_ESCAPE_TEXT.search(text):
        _lone_surrogate(value, path)


async def parse_json_object_yielding(
    raw: bytes,
    item_limits: Mapping[str, int] | None = None,
    too_many: Callable[[TooManyItems], GatewayError] | None = None,
) -> dict[str, Any]:
    """`parse_json_object`, in slices with yields to the loop (for large bodies)."""
    text = _decode(raw)
    try:
        data = await loads_object(text, _DECODER, _check_piece, item_limits)
    except TooManyItems as exc:
        raise (too_many(exc) if too_many else _invalid(str(exc))) from None
    except RecursionError:
        raise _invalid(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise _invalid(f"request body is not valid JSON: {exc}") from None
    return _object(data)


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


async def read_json_object(
    request: Request,
    max_bytes: int,
    item_limits: Mapping[str, int] | None = None,
    too_many: Callable[[TooManyItems], GatewayError] | None = None,
) -> dict[str, Any]:
    """The body as a JSON object. `item_limits` caps top-level arrays by name while large
    bodies are parsed (small ones are checked by the caller, after a parse of a few ms)."""
    check_content_type(request)
    raw = await read_body(request, max_bytes)
    if len(raw) > YIELDING_PARSE_BYTES:
        return await parse_json_object_yielding(raw, item_limits, too_many)
    return parse_json_object(raw)
