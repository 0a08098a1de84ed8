"""Reading a request body: size limit first, then JSON.

The limit is enforced while reading, not after: a client announcing (or streaming) more than
`max_bytes` gets 413 without the gateway holding the whole body in memory.
"""

from __future__ import annotations

import json
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


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    raw = await read_body(request, max_bytes)
    if not raw:
        raise GatewayError(
            400, "request body is empty; expected a JSON object", code="invalid_json"
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(
            400, f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise GatewayError(
            400,
            f"request body must be a JSON object, got {type(data).__name__}",
            code="invalid_json",
        )
    return data
