"""The approximate prefix view, shared: what this replica sent where goes to the peers, and
theirs comes into our index. Only for instances without live KV events: for those every
replica subscribes to the engine's events itself (as Dynamo's routers do), so exact prefix
state needs no sync at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sage_cp_plugin.kvevents.view import EventsOrApproximateView
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache

MAX_OUTBOX = 5000  # dispatches kept while Redis is away; older ones are dropped (stale anyway)


class SharedApproximatePrefixCache(ApproximatePrefixCache):
    """`ApproximatePrefixCache` that also records its own dispatches for the peers (so its
    keys are the digests every process computes alike: `portable`)."""

    portable = True

    def __init__(self, base: ApproximatePrefixCache, view: EventsOrApproximateView) -> None:
        super().__init__(base.chunk_chars, base.max_chunks, base.index.max_entries)
        # The index goes on (sharing starts with the coordinator, before any dispatch;
        # entries keyed by `base`'s process-local keys would no longer be matched and age out).
        self.index = base.index
        self.capacities = base.capacities
        self._view = view
        self.outbox: list[list[Any]] = []
        # Called on every dispatch: a new booking is what peers must hear at once (two
        # replicas placing requests on one stale view pile them onto the same instance).
        self.on_change: Callable[[], None] = lambda: None

    def on_dispatch(self, item: QueuedRequest, instance_id: str) -> None:
        super().on_dispatch(item, instance_id)
        self.on_change()
        if self._view.exact.is_exact(instance_id):
            return
        hashes, per_chunk = self._hashes(item)
        if hashes and len(self.outbox) < MAX_OUTBOX:
            packed = b"".join(cast(list[bytes], hashes))  # `portable`: digests
            self.outbox.append([instance_id, per_chunk, packed.hex()])

    def take_outbox(self) -> list[list[Any]]:
        out, self.outbox = self.outbox, []
        return out

    def learn(self, entries: list[list[Any]]) -> None:
        """Dispatches a peer made: index them as if we had sent them."""
        for iid, per_chunk, packed in entries:
            if iid not in self.capacities:
                continue  # an instance we do not know (yet)
            raw = bytes.fromhex(packed)
            hashes = [raw[i : i + 8] for i in range(0, len(raw), 8)]
            self.index.insert(
                hashes, iid, capacity=self.capacities.get(iid), tokens_per_chunk=float(per_chunk)
            )


def install(view: EventsOrApproximateView) -> SharedApproximatePrefixCache:
    """Swap the view's approximate part for the shared one (idempotent)."""
    if isinstance(view.approx, SharedApproximatePrefixCache):
        return view.approx
    shared = SharedApproximatePrefixCache(view.approx, view)
    view.approx = shared
    return shared
