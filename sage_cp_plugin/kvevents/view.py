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
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
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
    """The index, plus the prompts in flight on each instance.

    An engine reports a block once it has computed it; a request dispatched a moment ago
    whose prefix is still being prefilled is not in the index yet, but a request sent behind it
    to the same engine will hit it (the engine runs them in order). So the blocks of requests
    in flight count as held from dispatch until they finish (`on_dispatch` / `on_finish`);
    by then the engine has reported them (or has not kept them, and the index says so).
    """

    def __init__(self, index: BlockIndex, is_live: Callable[[str], bool]) -> None:
        self.index = index
        self.is_exact = is_live
        # instance -> content hash -> requests in flight that will hold it
        self._pending: dict[str, dict[int, int]] = {}
        self._by_request: dict[str, list[tuple[str, list[int]]]] = {}

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
                iid = candidates[i].instance_id
                d = depth[iid]
                pending = self._pending.get(iid)
                if pending:
                    d = self._with_pending(usable, iid, pending)
                out[i] = d * bs
        return out

    def _with_pending(self, hashes: Sequence[int], iid: str, pending: dict[int, int]) -> int:
        holds = self.index.holds
        d = 0
        for h in hashes:
            if not (pending.get(h) or holds(h, iid)):
                break
            d += 1
        return d

    def on_dispatch(self, item: QueuedRequest, instance_id: str) -> None:
        bs = self.index.block_size(instance_id)
        if bs is None or not item.prompt_token_ids:
            return
        hashes = hashes_for(item, bs)
        if not hashes:
            return
        pending = self._pending.setdefault(instance_id, {})
        for h in hashes:
            pending[h] = pending.get(h, 0) + 1
        self._by_request.setdefault(item.request_id, []).append((instance_id, hashes))

    def on_finish(self, item: QueuedRequest, instance_id: str) -> None:
        legs = self._by_request.get(item.request_id)
        if not legs:
            return
        for k, (iid, hashes) in enumerate(legs):
            if iid != instance_id:
                continue
            del legs[k]
            pending = self._pending.get(iid, {})
            for h in hashes:
                left = pending.get(h, 0) - 1
                if left > 0:
                    pending[h] = left
                else:
                    pending.pop(h, None)
            break
        if not legs:
            del self._by_request[item.request_id]

    def forget_instance(self, instance_id: str) -> None:
        self._pending.pop(instance_id, None)


class EventsOrApproximateView:
    """The fleet's `PrefixCacheView`: exact for instances whose KV events are live, the
    approximate view (what was sent where, with its eviction model) for the others, and for
    every instance when the request's token ids are unknown (a chat request to real vLLM).

    Exact counts are engine tokens; they are reported as the same share of the request's
    ``input_tokens``, the unit the load model and the approximate view use.
    """

    def __init__(self, exact: ExactPrefixView, approx: ApproximatePrefixCache) -> None:
        self.exact = exact
        self.approx = approx

    def cached_tokens(self, item: QueuedRequest, candidates: Sequence[InstanceState]) -> list[int]:
        ids = item.prompt_token_ids
        live = self.exact.is_exact
        exact_at = [i for i, c in enumerate(candidates) if live(c.instance_id)] if ids else []
        if not exact_at:
            return self.approx.cached_tokens(item, candidates)
        exact = self.exact.cached_tokens(item, candidates)
        out = (
            [0] * len(candidates)
            if len(exact_at) == len(candidates)
            else self.approx.cached_tokens(item, candidates)
        )
        assert ids is not None
        scale = item.input_tokens / len(ids)
        for i in exact_at:
            out[i] = round(exact[i] * scale)
        return out

    def prepare(self, item: QueuedRequest) -> None:
        self.approx.prepare(item)

    def on_dispatch(self, item: QueuedRequest, instance_id: str) -> None:
        self.approx.on_dispatch(item, instance_id)
        self.exact.on_dispatch(item, instance_id)

    def set_capacity(self, state: InstanceState) -> None:
        self.approx.set_capacity(state)

    def on_instance_removed(self, instance_id: str) -> None:
        self.approx.on_instance_removed(instance_id)
