"""`FleetShare`: keeps one replica's coordinator in step with its peers through a
`FleetStateStore` (Redis across hosts).

Loops (all on the coordinator's event loop, on its clock):
- publish: at each dispatch, first token and request end (coalesced per event-loop turn) and
  every `publish_interval_s`, this replica's load per instance goes to the store (key with
  TTL) and to every peer (message) when it changed, at least every TTL/3 otherwise; so do
  the prefix dispatches of instances without KV events. First tokens and ends go at once
  because replicas break ties by the same tied set only while their views agree
  (`routing.predicted`);
- listen: messages from peers (load, prefix, admin) are applied as they come; the shared
  state is read each time the subscription becomes live (never before: a change announced
  in between would be missed for good), and the admin record is re-read every
  `admin_check_interval_s` (a lost message is repaired within it);
- resync: while the store is unreachable, this replica routes on its own view (peer loads
  expire after the TTL) and says so (`status()`, the gateway's /health and /metrics); when
  the store answers again, it re-reads everything (admin, loads) and republishes its own.

A new replica starts from the shared state (`start` reads admin, every peer's load and the
prefix log before the gateway takes traffic), never empty.

Admin changes (policy, router, drain, instances registered or removed through the admin
API) are one record in the store plus a message; a replica
applies a record it did not write within one message delivery. Conflicts: the last writer
wins, except after the store lost its data: then the first replica to re-seed it wins
(`only_if_missing`), the others adopt it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.types import ExecutionInstance

from .claims import DEFAULT_CLAIM_TTL_S, RequestClaims
from .peers import ADDRESS_FIELD, PeerLoads, own_load
from .prefix_share import SharedApproximatePrefixCache, install
from .store import SUBSCRIBED, FleetStateStore, StoreUnavailable
from .tenant_usage import TenantUsageShare

logger = logging.getLogger(__name__)

DrainHook = Callable[[str, bool], None]


@dataclass
class ShareStatus:
    connected: bool = False
    last_error: str | None = None
    disconnects: int = 0
    resyncs: int = 0
    messages_in: int = 0
    messages_out: int = 0
    admin_applied: int = 0


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class FleetShare:
    def __init__(
        self,
        manager: ControlPlaneManager,
        store: FleetStateStore,
        replica_id: str | None = None,
        *,
        publish_interval_s: float = 0.05,
        load_ttl_s: float = 3.0,
        resync_interval_s: float = 0.25,
        prefix_log_len: int = 20_000,
        on_drain: DrainHook | None = None,
        claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
    ) -> None:
        if publish_interval_s <= 0 or load_ttl_s <= publish_interval_s:
            raise ValueError("need 0 < publish_interval_s < load_ttl_s")
        self.manager = manager
        self.store = store
        self.replica_id = replica_id or default_replica_id()
        self.publish_interval_s = publish_interval_s
        self.load_ttl_s = load_ttl_s
        self.resync_interval_s = resync_interval_s
        self.prefix_log_len = prefix_log_len
        self.on_drain: DrainHook = on_drain or (lambda iid, _remove: manager.drain_instance(iid))
        self.peers = PeerLoads(self.replica_id, load_ttl_s)
        # Where this replica serves, for peers handing it requests it claimed (None: it
        # serves nothing peers can reach, e.g. the virtual-clock benchmark).
        self.address: str | None = None
        self.claims = RequestClaims(
            store, self.replica_id, self.peers, manager.now, lambda: self.status.connected,
            claim_ttl_s,
        )  # fmt: skip
        self.prefix: SharedApproximatePrefixCache = install(manager.cache_view)
        self._dirty = asyncio.Event()
        self.prefix.on_change = self._dirty.set
        manager.dispatcher.attempts.on_load_change = self._dirty.set
        # Tenants' rate-limit and quota usage (tenant_usage.py).
        self.tenants = TenantUsageShare(manager.admission, self.replica_id, self._dirty.set)
        self.status = ShareStatus()
        # Admin state as this replica knows it; `_admin_dirty`: a local change the store
        # has not taken yet (it was down), written on reconnect instead of read.
        o = manager.options
        self.admin: dict[str, Any] = {
            "policy": {"name": manager.policy_name, "options": dict(o.policy_options)},
            "router": {"name": manager.routing_strategy, "options": dict(o.router_options)},
            "drain": {},
            "by": self.replica_id,
            "version": 0,
        }
        self._admin_dirty = False
        self._last_sent: dict[str, Any] | None = None
        self._last_sent_at = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []
        self._removals: set[asyncio.Task[None]] = set()
        # How often the listener re-reads the admin record (a lost message costs this much).
        self.admin_check_interval_s = min(1.0, load_ttl_s / 3)
        self._admin_checked_at = float("-inf")

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the shared state (when the store answers) and start the loops."""
        await self._resync(first=True)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="fleetshare-publish"),
            asyncio.create_task(self._listen_loop(), name="fleetshare-listen"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self.status.connected:
            with contextlib.suppress(StoreUnavailable):
                await self.store.put_load(self.replica_id, {}, self.publish_interval_s)
        await self.store.aclose()

    def describe(self) -> dict[str, Any]:
        s = self.status
        return {
            "replica": self.replica_id,
            "connected": s.connected,
            "peers": sorted(self.peers.by_replica),
            "last_error": s.last_error,
            "disconnects": s.disconnects,
            "resyncs": s.resyncs,
            "admin_version": self.admin.get("version", 0),
            "address": self.address,
            "request_claims": dict(self.claims.counts),
        }

    # -- store reachability ------------------------------------------------------------------
    def _lost(self, exc: StoreUnavailable) -> None:
        if self.status.connected:
            self.status.disconnects += 1
            logger.warning("shared state unreachable, serving on own view: %s", exc)
            # Peers cannot hear this replica's usage any more, nor it theirs: admit only
            # this replica's share of each limit until the store answers again.
            self.tenants.lost(len(self.peers.by_replica))
        self.status.connected = False
        self.status.last_error = str(exc)

    async def _resync(self, first: bool = False) -> bool:
        """Re-read everything from the store; False while it is unreachable."""
        now = self.manager.now()
        try:
            await self.store.ping()
            if self._admin_dirty:
                await self.store.put_admin(self.admin)
                self._admin_dirty = False
            shared = await self.store.get_admin()
            if shared is None:
                # The store is empty (new, or restarted without persistence): seed it with
                # ours; if another replica was first, adopt theirs.
                if not await self.store.put_admin(self.admin, only_if_missing=True):
                    shared = await self.store.get_admin()
            if shared is not None:
                self._apply_admin(shared)
            loads = await self.store.get_loads()
            for replica, load in loads.items():
                self.peers.update(replica, load, now)
            await self.tenants.resync(self.store, loads, now)
            self.peers.apply(self.manager.fleet)
            if first:
                for batch in await self.store.read_prefix():
                    self.prefix.learn(batch.get("entries", []))
                for s in self.manager.fleet:
                    if self.peers.peers_say_down(s.instance_id):
                        s.healthy = False  # until our own probe passes
            await self._send_load(force=True)
        except StoreUnavailable as exc:
            self._lost(exc)
            return False
        if not self.status.connected:
            self.status.resyncs += 0 if first else 1
            if not first:
                logger.info("shared state reachable again: resynchronised")
        self.status.connected = True
        self.status.last_error = None
        self.tenants.reconnected()
        return True

    # -- publishing ----------------------------------------------------------------------------
    async def _send_load(self, force: bool = False) -> None:
        now = self.manager.now()
        load: dict[str, Any] = own_load(self.manager.fleet, now)
        if self.address is not None:
            load[ADDRESS_FIELD] = self.address
        heartbeat_due = now - self._last_sent_at >= self.load_ttl_s / 3
        send_load = force or heartbeat_due or load != self._last_sent
        entries = self.prefix.take_outbox()
        batch = {"kind": "prefix", "replica": self.replica_id, "entries": entries}
        # Messages first, then the records a new replica reads: peers deciding meanwhile
        # act on what they heard, and every round trip before the message is time in which
        # they place requests without this replica's newest bookings (docs/scale-out.md).
        if send_load:
            await self.store.publish({"kind": "load", "replica": self.replica_id, "load": load})
            self.status.messages_out += 1
        if entries:
            await self.store.publish(batch)
            self.status.messages_out += 1
        self.status.messages_out += await self.tenants.send(self.store, now)
        if send_load:
            record = self.tenants.record(load, now)
            await self.store.put_load(self.replica_id, record, self.load_ttl_s)
            self._last_sent, self._last_sent_at = load, now
        if entries:
            await self.store.append_prefix(batch, self.prefix_log_len)

    async def _publish_loop(self) -> None:
        while True:
            # A dispatch, first token or end wakes it at once; prefill progress rides on
            # the tick.
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set, and `stop` then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.publish_interval_s):
                    await self._dirty.wait()
            await asyncio.sleep(0)  # coalesce the dispatches of this loop iteration
            self._dirty.clear()
            now = self.manager.now()
            if self.peers.expire(now) or not self.status.connected:
                self.peers.apply(self.manager.fleet)
            if not self.status.connected:
                self.prefix.take_outbox()  # peers will not hear it; our index has it
                continue
            try:
                await self._send_load()
            except StoreUnavailable as exc:
                self._lost(exc)

    # -- listening -------------------------------------------------------------------------------
    async def _listen_loop(self) -> None:
        while True:
            try:
                async for msg in self.store.subscribe():
                    if msg is SUBSCRIBED or not self.status.connected:
                        # The subscription is live (again), or the publisher lost the store
                        # meanwhile: read the shared state now. Read before the subscription
                        # was live, it could miss a change whose message went out in between,
                        # and nothing would ever repeat it.
                        if not await self._resync():
                            break
                        if msg is SUBSCRIBED:
                            continue
                    if msg:
                        self._on_message(msg)
                    await self._check_admin()
            except StoreUnavailable as exc:
                self._lost(exc)
            # A subscription that ended or failed may have missed messages: resync first.
            self.status.connected = False
            await asyncio.sleep(self.resync_interval_s)

    async def _check_admin(self) -> None:
        """Every `admin_check_interval_s`, compare the admin record with ours: a message can
        be lost (pub/sub delivers at most once), the record cannot."""
        now = self.manager.now()
        if now - self._admin_checked_at < self.admin_check_interval_s:
            return
        self._admin_checked_at = now
        shared = await self.store.get_admin()
        if shared is None or self._admin_dirty:
            return  # an emptied store is re-seeded by the next resync
        if (shared.get("version"), shared.get("by")) != (
            self.admin.get("version"),
            self.admin.get("by"),
        ):
            self._apply_admin(shared)

    def _on_message(self, msg: dict[str, Any]) -> None:
        sender = msg.get("replica")
        if sender == self.replica_id:
            return
        self.status.messages_in += 1
        kind = msg.get("kind")
        if kind == "load" and isinstance(sender, str):
            self.peers.update(sender, msg.get("load") or {}, self.manager.now())
            self.peers.apply(self.manager.fleet)
        elif kind == "prefix":
            self.prefix.learn(msg.get("entries") or [])
        elif kind == "admin" and isinstance(msg.get("admin"), dict):
            self._apply_admin(msg["admin"])
        elif isinstance(sender, str):  # a tenant's rate-limit or quota usage
            self.tenants.on_message(kind, sender, msg, self.manager.now())

    # -- admin -------------------------------------------------------------------------------------
    async def announce_admin(
        self,
        *,
        policy: tuple[str, dict[str, Any]] | None = None,
        router: tuple[str, dict[str, Any]] | None = None,
        drain: tuple[str, bool] | None = None,
        instance: tuple[str, dict[str, Any] | None] | None = None,
    ) -> bool:
        """Record an admin change made on this replica and send it to every peer. False
        when the store is unreachable: the change holds here and is written on reconnect.
        `instance`: (id, its `ExecutionInstance` fields) registered here, or (id, None)
        removed here."""
        a = dict(self.admin)
        if policy is not None:
            a["policy"] = {"name": policy[0], "options": policy[1]}
        if router is not None:
            a["router"] = {"name": router[0], "options": router[1]}
        if drain is not None:
            a["drain"] = {**a.get("drain", {}), drain[0]: drain[1]}
        if instance is not None:
            iid, spec = instance
            a["instances"] = {**a.get("instances", {}), iid: spec}
            if spec is not None:  # registered (again): an old drain of that id is over
                a["drain"] = {k: v for k, v in a.get("drain", {}).items() if k != iid}
        a["by"] = self.replica_id
        a["version"] = int(a.get("version", 0)) + 1
        self.admin = a
        try:
            await self.store.put_admin(a)
            await self.store.publish({"kind": "admin", "replica": self.replica_id, "admin": a})
        except StoreUnavailable as exc:
            self._admin_dirty = True
            self._lost(exc)
            return False
        return True

    def _apply_admin(self, shared: dict[str, Any]) -> None:
        m = self.manager
        pol, rou = shared.get("policy") or {}, shared.get("router") or {}
        try:
            if self._differs(pol, self.admin["policy"], m.policy_name):
                m.update_policy(pol["name"], **(pol.get("options") or {}))
            if self._differs(rou, self.admin["router"], m.routing_strategy):
                m.update_router(rou["name"], **(rou.get("options") or {}))
        except Exception as exc:  # a plugin this replica lacks: keep serving, say why
            logger.error("cannot apply shared admin change %r: %s", shared, exc)
        self._apply_instances(shared.get("instances") or {})
        for iid, remove in (shared.get("drain") or {}).items():
            state = m.fleet.get(iid)
            if state is not None and not state.draining:
                self.on_drain(iid, bool(remove))
        self.admin = {**shared}
        self.status.admin_applied += 1

    def _apply_instances(self, instances: dict[str, Any]) -> None:
        """One instance registry: an instance registered through any replica's admin API
        is registered here, one removed there is removed here."""
        m = self.manager
        for iid, spec in instances.items():
            present = m.fleet.get(iid) is not None
            try:
                if spec is not None and not present:
                    m.register_instance(ExecutionInstance.model_validate(spec))
                elif spec is None and present:
                    task = asyncio.create_task(m.unregister_instance(iid), name=f"remove-{iid}")
                    self._removals.add(task)
                    task.add_done_callback(self._removals.discard)
            except Exception as exc:  # keep serving on the registry we have; say why
                logger.error("cannot apply shared instance change %r: %s", iid, exc)

    @staticmethod
    def _differs(shared: dict[str, Any], known: dict[str, Any], in_force: str) -> bool:
        """The shared choice is not the one in force here (name, or options we applied)."""
        if not shared.get("name"):
            return False
        if shared["name"] != in_force:
            return True
        return (shared.get("options") or {}) != (known.get("options") or {})
