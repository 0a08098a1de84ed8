"""What each instance's prefix cache holds, as routers and the load model ask it.

`PrefixCacheView` is the protocol: how many of a request's prompt tokens each candidate
would serve from its cache. Two implementations share it: `ApproximatePrefixCache` here
(what we sent where, with an eviction model bounded by each instance's KV capacity) and an
exact one fed by vLLM's KV-cache events. Views that learn from our own dispatches get
`on_dispatch`; reading (`cached_tokens`) never changes a view, so a decision that is
computed and then not taken leaves no trace.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.prefix_index import PrefixIndex, chunk_hashes, local_chunk_keys
from sage_cp_plugin.state import InstanceState


class PrefixCacheView(Protocol):
    def cached_tokens(
        self, item: QueuedRequest, candidates: Sequence[InstanceState]
    ) -> list[int]: ...

    def on_dispatch(self, item: QueuedRequest, instance_id: str) -> None: ...


def prepare(view: object, item: QueuedRequest) -> None:
    """Let a view precompute what it reads of a request (`prepare(item)`), once, at
    admission; views without it compute on demand."""
    hook = getattr(view, "prepare", None)
    if hook is not None:
        hook(item)


def kv_capacity_tokens(state: InstanceState) -> float | None:
    """The instance's KV cache in tokens, when its description states it."""
    return state.instance.kv_capacity_hint  # read per candidate: cached on the instance


class ApproximatePrefixCache:
    """Prefix cache contents inferred from what the coordinator sent where.

    Prompts are cut into chained character chunks, keyed by `prefix_index.local_chunk_keys`
    (this process only), or by `prefix_index.chunk_hashes` when `portable` (keys other
    processes read: the replicas' shared view); a chunk is counted as `chunk_chars * input_tokens / len(prompt)` tokens. Each instance is assumed
    to keep the most recently sent chunks up to its KV capacity (`kv_capacity_tokens` in the
    instance's metadata; unbounded when unknown).
    """

    # Keys the same in every process (`prefix_index.chunk_hashes`), for a view whose keys
    # other processes read; False: this process's cheaper keys.
    portable = False

    def __init__(self, chunk_chars: int = 256, max_chunks: int = 512, max_entries: int = 200_000):
        if chunk_chars <= 0:
            raise ValueError(f"chunk_chars must be positive, got {chunk_chars!r}")
        self.chunk_chars = chunk_chars
        self.max_chunks = max_chunks
        self.index = PrefixIndex(max_entries)
        self.capacities: dict[str, float | None] = {}
        # One-entry memo: a request is hashed once for its decision and its dispatch.
        self._memo: tuple[QueuedRequest | None, list[Hashable], float] = (None, [], 0.0)
        # The last request matched: (request, index version, index, match).
        self._matched: tuple[QueuedRequest | None, int, PrefixIndex | None, dict[str, int]] = (
            None, -1, None, {}
        )  # fmt: skip

    def _chunks(self, item: QueuedRequest) -> tuple[list[Hashable], float]:
        text = item.request.prompt_text()
        keys = chunk_hashes if self.portable else local_chunk_keys
        hashes: list[Hashable] = list(keys(text, self.chunk_chars, self.max_chunks))
        per_chunk = self.chunk_chars * item.input_tokens / len(text) if text else 0.0
        return hashes, per_chunk

    def prepare(self, item: QueuedRequest) -> None:
        """Hash the prompt once, at admission, onto the request: a decision reads the hashes
        (the same ones) instead of computing them."""
        hashes, per_chunk = self._chunks(item)
        item.prefix_chunks = ((self.chunk_chars, self.portable), hashes, per_chunk)

    def _hashes(self, item: QueuedRequest) -> tuple[list[Hashable], float]:
        prepared = item.prefix_chunks
        if prepared is not None and prepared[0] == (self.chunk_chars, self.portable):
            return prepared[1], prepared[2]
        memo_item, hashes, per_chunk = self._memo
        if memo_item is item:
            return hashes, per_chunk
        hashes, per_chunk = self._chunks(item)
        self._memo = (item, hashes, per_chunk)
        return hashes, per_chunk

    def cached_tokens(self, item: QueuedRequest, candidates: Sequence[InstanceState]) -> list[int]:
        hashes, per_chunk = self._hashes(item)
        if not hashes:
            return [0] * len(candidates)
        # The match for this request while the index is unchanged: its decision and its
        # booking (`attempts`: the chosen instance's cached tokens) ask in turn, with
        # nothing inserted in between.
        memo = self._matched
        index = self.index
        if memo[0] is item and memo[1] == index.version and memo[2] is index:
            matched = memo[3]
        else:
            matched = index.match(hashes)
            self._matched = (item, index.version, index, matched)
        if not matched:
            return [0] * len(candidates)
        cap = item.input_tokens
        # Per matched instance once (few), then a lookup per candidate (an unmatched one holds 0).
        held = {iid: min(cap, int(m * per_chunk)) for iid, m in matched.items()}
        return [held.get(c.instance_id, 0) for c in candidates]

    def on_dispatch(self, item: QueuedRequest, instance_id: str) -> None:
        hashes, per_chunk = self._hashes(item)
        if hashes:
            self.index.insert(
                hashes,
                instance_id,
                capacity=self.capacities.get(instance_id),
                tokens_per_chunk=per_chunk,
            )

    def set_capacity(self, state: InstanceState) -> None:
        self.capacities[state.instance_id] = kv_capacity_tokens(state)

    def on_instance_removed(self, instance_id: str) -> None:
        self.capacities.pop(instance_id, None)
        self.index.remove_instance(instance_id)
