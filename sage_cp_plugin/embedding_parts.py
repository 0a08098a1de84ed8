"""Embedding calls with many inputs: split into parts that run concurrently on the embedding
instances, then reassembled in input order as one OpenAI `/v1/embeddings` response."""

from __future__ import annotations

from typing import Any

from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.types import RequestResult, RequestStatus


def split_inputs(inputs: str | list[str], batch_size: int) -> list[list[str]]:
    """Consecutive parts of at most `batch_size` texts each."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise ValueError("inputs must hold at least one text")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def assemble(results: list[RequestResult], model_name: str | None) -> dict[str, Any]:
    """One response from the parts' results, in order. Any failed part fails the call
    (raises `UpstreamError`) rather than returning a partial answer."""
    data: list[dict[str, Any]] = []
    prompt_tokens = 0
    for res in results:
        if res.state != RequestStatus.COMPLETED or res.embeddings is None:
            raise UpstreamError(f"embedding part {res.request_id} failed: {res.error}")
        for vec in res.embeddings:
            data.append({"object": "embedding", "index": len(data), "embedding": vec})
        prompt_tokens += res.prompt_tokens
    model = model_name or (results[0].response or {}).get("model", "")
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "parts": [{"request_id": r.request_id, "instance_id": r.instance_id} for r in results],
    }


# A retained result's vectors are held twice (the OpenAI response and `embeddings`): a float
# object (24 bytes, shared) plus a list slot in each (8 + 8).
BYTES_PER_VECTOR_VALUE = 40


def result_bytes(result: RequestResult) -> int:
    """An estimate of the memory a retained result holds (for the retention byte bound)."""
    size = 1024 + len(result.output or "")
    if result.embeddings:
        size += BYTES_PER_VECTOR_VALUE * sum(len(v) for v in result.embeddings)
    return size
