"""`ExactPrefixView`: the KV-event index as a `PrefixCacheView`.

Counts tokens the way vLLM's scheduler does: the longest chain of the prompt's full blocks
the instance holds, capped so that the last prompt token is always computed (a fully cached
prompt still needs one token of prefill to produce logits) -- the same number vLLM adds to
`vllm:prefix_cache_hits_total`. Instances whose events are not live (no endpoint, nothing
received yet, subscriber stopped) count 0 here: callers ask `is_exact` and use the
approximate view for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sage_cp_plugin.kvevents.index import BlockIndex, prompt_block_hashes
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import InstanceState


def hashes_for(item: QueuedRequest, block_size: int) -> list[int] | None:
    """The prompt's block hashes for ``block_size``, cached on the item."""
    ids = item.prompt_token_ids
    if ids is None:
        return None
    cache = item.block_hashes
    if cache is None:
        cache = item.block_hashes = {}
    hashes = cache.get(block_size)
    if hashes is None:
        hashes = cache[block_size] = prompt_block_hashes(ids, block_size)
    return hashes


class ExactPrefixView:
    def __init__(self, index: BlockIndex, is_live: Callable[[str], bool]) -> None:
        self.index = index
        self.is_exact = is_live

    def cached_tokens(self, item: QueuedRequest, candidates: Sequence[InstanceState]) -> list[int]:
        ids = item.prompt_token_ids
        out = [0] * len(candidates)
        if not ids:
            return out
        by_size: dict[int, list[int]] = {}
        for i, c in enumerate(candidates):
            iid = c.instance_id
            if not self.is_exact(iid):
                continue
            bs = self.index.block_size(iid)
            if bs is not None:
                by_size.setdefault(bs, []).append(i)
        for bs, positions in by_size.items():
            hashes = hashes_for(item, bs)
            if not hashes:
                continue
            usable = hashes[: (len(ids) - 1) // bs]
            depth = self.index.match(usable, [candidates[i].instance_id for i in positions])
            for i in positions:
                out[i] = depth[candidates[i].instance_id] * bs
        return out

    def on_dispatch(self, item: QueuedRequest, instance_id: str) -> None:
        """Nothing to learn: the engine's events say what it caches."""
