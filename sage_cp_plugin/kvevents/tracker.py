"""`KVEventTracker`: the coordinator's side of KV-cache events, one per manager.

Owns the one `BlockIndex`, a subscriber per instance that has a ``kv_events_endpoint``, the
prompt tokenizers those instances declare, and which instance is in which mode:

- ``events``: its events arrive (at least one batch since its subscriber started); routers
  use the exact index for it.
- ``approximate``: no endpoint, or nothing received yet; routers use the approximate index
  of what was sent where, which cannot see evictions.

In-process fleets on the virtual clock feed batches through `in_process_feed` -- the same
`EventStream` and index code as the sockets, without the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import zmq.asyncio

from sage_cp_plugin.kvevents.events import EventBatch
from sage_cp_plugin.kvevents.index import BlockIndex
from sage_cp_plugin.kvevents.prompt_tokens import PromptTokenizer, load_tokenizer
from sage_cp_plugin.kvevents.stream import EventStream
from sage_cp_plugin.kvevents.subscriber import KVEventSubscriber, connect_address
from sage_cp_plugin.kvevents.view import ExactPrefixView, hashes_for
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import ExecutionInstance

logger = logging.getLogger(__name__)

EVENTS = "events"
APPROXIMATE = "approximate"


class KVEventTracker:
    def __init__(self) -> None:
        self.index = BlockIndex()
        self.view = ExactPrefixView(self.index, self.is_live)
        self._live: set[str] = set()
        self._subscribers: dict[str, KVEventSubscriber] = {}
        self._streams: dict[str, EventStream] = {}  # in-process feeds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tokenizers: dict[str, PromptTokenizer] = {}  # by tokenizer spec
        self._tokenizer_of: dict[str, PromptTokenizer] = {}  # by instance id
        self._ctx: zmq.asyncio.Context | None = None
        self._running = False
        self._applied: asyncio.Event | None = None
        self._publishing: dict[str, ExecutionInstance] = {}  # instances with an endpoint

    # -- fleet -----------------------------------------------------------------------------
    def add_instance(self, inst: ExecutionInstance) -> None:
        if inst.tokenizer is not None:
            tok = self._tokenizers.get(inst.tokenizer)
            if tok is None:
                tok = self._tokenizers[inst.tokenizer] = load_tokenizer(inst.tokenizer)
            self._tokenizer_of[inst.instance_id] = tok
        if inst.kv_events_endpoint is None:
            return
        self._publishing[inst.instance_id] = inst
        self._subscribe(inst)

    def _subscribe(self, inst: ExecutionInstance) -> None:
        assert inst.kv_events_endpoint is not None
        if self._ctx is None:
            self._ctx = zmq.asyncio.Context()
        iid = inst.instance_id
        sub = KVEventSubscriber(
            self._ctx,
            self.index,
            iid,
            connect_address(inst.kv_events_endpoint, inst.host),
            replay_endpoint=(
                connect_address(inst.kv_events_replay_endpoint, inst.host)
                if inst.kv_events_replay_endpoint
                else None
            ),
            topic=inst.kv_events_topic,
            data_parallel_size=inst.data_parallel_size,
            on_batch=self._on_batch,
        )
        self._subscribers[iid] = sub
        if self._running:
            self._start(iid)

    def _on_batch(self, instance_id: str) -> None:
        self._live.add(instance_id)
        if self._applied is not None:
            self._applied.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checked after each applied batch (tests and
        the end-to-end tier wait on the index this way instead of sleeping)."""
        if self._applied is None:
            self._applied = asyncio.Event()
        async with asyncio.timeout(timeout):
            while not predicate():
                self._applied.clear()
                await self._applied.wait()

    def in_process_feed(self, instance_id: str) -> Callable[[EventBatch], None]:
        """A callable taking an instance's batches directly (numbered here, in order)."""
        stream = self._streams[instance_id] = EventStream(self.index, (instance_id, 0))
        seq = iter(range(1 << 62))

        def feed(batch: EventBatch) -> None:
            if instance_id not in self._streams:
                return  # removed
            stream.on_live(next(seq), batch)
            self._on_batch(instance_id)

        return feed

    async def remove_instance(self, instance_id: str) -> None:
        self._live.discard(instance_id)
        self._publishing.pop(instance_id, None)
        self._subscribers.pop(instance_id, None)
        self._streams.pop(instance_id, None)
        self._tokenizer_of.pop(instance_id, None)
        task = self._tasks.pop(instance_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.index.remove_instance(instance_id)
        self.view.forget_instance(instance_id)

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self, iid: str) -> None:
        sub = self._subscribers[iid]
        task = asyncio.get_running_loop().create_task(sub.run(), name=f"sage-cp-kv-events-{iid}")
        task.add_done_callback(functools.partial(self._stopped, iid))
        self._tasks[iid] = task

    def _stopped(self, iid: str, task: asyncio.Task[None]) -> None:
        self._live.discard(iid)
        if not task.cancelled() and task.exception() is not None:
            logger.error("KV-event subscriber of %s stopped: %r", iid, task.exception())

    async def start(self) -> None:
        self._running = True
        if self._ctx is None:  # started again after `stop`: new sockets on a new context
            for inst in self._publishing.values():
                self._subscribe(inst)
        for iid in self._subscribers:
            if iid not in self._tasks:
                self._start(iid)

    async def stop(self) -> None:
        self._running = False
        tasks, self._tasks = list(self._tasks.values()), {}
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._live.clear()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- reading ---------------------------------------------------------------------------
    def is_live(self, instance_id: str) -> bool:
        return instance_id in self._live

    def mode(self, instance_id: str) -> str:
        return EVENTS if instance_id in self._live else APPROXIMATE

    @property
    def enabled(self) -> bool:
        return bool(self._subscribers or self._streams)

    def tokenize(self, item: QueuedRequest, serving: Sequence[InstanceState]) -> None:
        """At admission: the prompt's token ids (tokenizer of the first serving instance that
        declares one) and its block hashes for the block sizes already announced."""
        if not self._tokenizer_of:
            return
        for s in serving:
            tok = self._tokenizer_of.get(s.instance_id)
            if tok is None:
                continue
            item.prompt_token_ids = tok.token_ids(item.request)
            if item.prompt_token_ids is not None:
                sizes = {self.index.block_size(x.instance_id) for x in serving}
                for bs in sizes:
                    if bs is not None:
                        hashes_for(item, bs)
            return

    def status(self, instance_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode(instance_id)}
        sub = self._subscribers.get(instance_id)
        streams = sub.streams if sub is not None else []
        if instance_id in self._streams:
            streams = [self._streams[instance_id]]
        if streams:
            out["blocks"] = self.index.blocks_of(instance_id)
            out["block_size"] = self.index.block_size(instance_id)
            out["batches"] = sum(s.stats.batches for s in streams)
            out["gaps"] = sum(s.stats.gaps for s in streams)
            out["replays_ok"] = sum(s.stats.replays_ok for s in streams)
            out["replays_failed"] = sum(s.stats.replays_failed for s in streams)
            out["clears"] = sum(s.stats.clears for s in streams)
        return out
