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


# A retained result's vector value: a float object (24 bytes) plus its slot in the list (8);
# the OpenAI response and `embeddings` share the lists (`share_vectors`).
BYTES_PER_VECTOR_VALUE = 32


def share_vectors(result: RequestResult) -> None:
    """Point the response's `data[i].embedding` at the lists in `result.embeddings`.

    Validation copies `embeddings` into new lists; without this the response keeps its own
    lists of the same floats, 8 more bytes per value for every answer held."""
    data = (result.response or {}).get("data")
    if not result.embeddings or not isinstance(data, list):
        return
    items = sorted(
        (d for d in data if isinstance(d, dict) and "embedding" in d),
        key=lambda d: d.get("index", 0),
    )
    if len(items) == len(result.embeddings):
        for item, vec in zip(items, result.embeddings, strict=True):
            item["embedding"] = vec


def result_bytes(result: RequestResult) -> int:
    """An estimate of the memory a retained result holds (for the retention byte bound)."""
    size = 1024 + len(result.output or "")
    if result.embeddings:
        size += BYTES_PER_VECTOR_VALUE * sum(len(v) for v in result.embeddings)
    return size
