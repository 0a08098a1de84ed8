"""What one attempt on one instance produced (`Outcome`) and where its streamed chunks go
(`ChunkSink`): the values the stream parser fills and the executor, attempts and PD read.
Their own module so the parser (`stream_parse`) and the answer readers (`upstream_answer`)
both depend on it instead of on each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ChunkSink = Callable[[dict[str, Any]], None]


@dataclass
class Outcome:
    """What one attempt on one instance produced, with loop-clock timestamps."""

    response: dict[str, Any] | None = None
    text: str | None = None
    embeddings: list[list[float]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float = 0.0
    token_times: list[float] = field(default_factory=list)
    kv_transfer_params: dict[str, Any] | None = None
    relayed: int = 0  # chunks already handed to the caller: after one, no retry is safe
