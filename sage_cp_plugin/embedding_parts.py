"""Splitting one embeddings request into parts and reassembling the answer in input order.

Shared by `ControlPlaneManager.embed` and the gateway's `/v1/embeddings`, so a long input
list runs as concurrent sub-requests across the embedding instances whichever way it came.
Pure functions: the callers submit, wait and cancel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sage_cp_plugin.types import RequestResult

# A retained result's vectors are held twice (the OpenAI response and `embeddings`): a float
# object (24 bytes, shared) plus a list slot in each (8 + 8).
BYTES_PER_VECTOR_VALUE = 40


def split_inputs(items: Sequence[str], size: int) -> list[list[str]]:
    if size <= 0:
        raise ValueError(f"batch_size must be positive, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def assemble(results: Sequence[RequestResult], model: str | None) -> dict[str, Any]:
    """One OpenAI embeddings response from completed parts, indices renumbered in order."""
    data: list[dict[str, Any]] = []
    prompt_tokens = 0
    for res in results:
        for vec in res.embeddings or []:
            data.append({"object": "embedding", "index": len(data), "embedding": vec})
        prompt_tokens += res.prompt_tokens
    name = model or ""
    if not name and results:
        name = (results[0].response or {}).get("model", "")
    return {
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def result_bytes(result: RequestResult) -> int:
    """An estimate of the memory a retained result holds (for the retention byte bound)."""
    size = 1024 + len(result.output or "")
    if result.embeddings:
        size += BYTES_PER_VECTOR_VALUE * sum(len(v) for v in result.embeddings)
    elif result.response is not None and result.output is None:
        size += 1024
    return size
