"""`FleetStateStore`: what replicas of the control plane share, and one in-memory backend.

Replicas share four things (docs/scale-out.md, "Many hosts"):
- each replica's load on every instance (its bookings), written under a key that expires
  after a TTL, so a dead replica's bookings vanish by themselves;
- the admin state (policy, router, drained instances): one record, plus a message to every
  replica when it changes;
- where prompts went, for the approximate prefix view of instances without KV events: a
  capped log a new replica replays, plus a message per batch;
- each replica's quota usage of the current period (kept until the period ends);
- request-id claims, so a request resent to another replica (batch shards, retrying
  clients) is not run twice while its first run is alive (claims.py decides what a
  replica does with a claim another replica holds).

Messages are dicts with a `kind` and the sender's `replica`. The in-memory store lets
several managers in one process (the virtual-clock benchmark, unit tests) share state with
the same `FleetShare` code the Redis backend serves across hosts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

# `subscribe` yields `{}` after this long without a message: redis-py's pub/sub reconnects
# by itself, so a listener that only woke on messages would never learn that a restarted
# Redis lost the state it must resynchronise.
IDLE_TICK_S = 0.25

# What `subscribe` yields each time its subscription is (again) live: every message published
# from then on reaches the subscriber, so a listener reads the shared state only after it
# (state read before it could miss a change whose message went out before the subscription).
# Redis pub/sub is at-most-once and redis-py re-subscribes by itself after a connection blip:
# the marker arrives again then, and the listener reads again what it may have missed.
SUBSCRIBED: dict[str, Any] = {"kind": "subscribed"}


class StoreUnavailable(Exception):
    """The shared store cannot be reached; callers keep their own view and retry later."""


class FleetStateStore(Protocol):
    async def ping(self) -> None: ...

    async def put_load(self, replica: str, load: dict[str, Any], ttl_s: float) -> None: ...

    async def get_loads(self) -> dict[str, dict[str, Any]]: ...

    async def get_admin(self) -> dict[str, Any] | None: ...

    async def put_admin(self, admin: dict[str, Any], only_if_missing: bool = False) -> bool: ...

    async def append_prefix(self, batch: dict[str, Any], max_len: int) -> None: ...

    async def read_prefix(self) -> list[dict[str, Any]]: ...

    async def put_quota(
        self, replica: str, period: str, totals: dict[str, Any], ttl_s: float
    ) -> None: ...

    async def get_quotas(self, period: str) -> dict[str, dict[str, Any]]: ...

    async def claim(self, request_id: str, replica: str, ttl_s: float) -> str:
        """Claim the id for `replica` unless someone holds it; returns the holder (one
        round trip)."""
        ...

    async def take_over_claim(self, request_id: str, dead: str, replica: str, ttl_s: float) -> str:
        """Move the claim from `dead` to `replica` if `dead` still holds it (or nobody
        does); returns the holder afterwards (another replica may have taken it first)."""
        ...

    async def release_claim(self, request_id: str, replica: str) -> None: ...

    async def publish(self, message: dict[str, Any]) -> None: ...

    def subscribe(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class InMemoryFleetStateStore:
    """One process's stand-in for Redis: same semantics, expiry on the event loop's clock
    (so it follows the virtual clock), optional delivery delay for messages."""

    def __init__(self, delivery_delay_s: float = 0.0) -> None:
        self.delivery_delay_s = delivery_delay_s
        self.loads: dict[str, tuple[float, dict[str, Any]]] = {}
        self.admin: dict[str, Any] | None = None
        self.prefix_log: deque[dict[str, Any]] = deque()
        self.claims: dict[str, tuple[float, str]] = {}
        self._claims_made = 0
        self.quotas: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self.up = True

    def _check(self) -> None:
        if not self.up:
            raise StoreUnavailable("in-memory store is down (test)")

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def ping(self) -> None:
        self._check()

    async def put_load(self, replica: str, load: dict[str, Any], ttl_s: float) -> None:
        self._check()
        self.loads[replica] = (self._now() + ttl_s, load)

    async def get_loads(self) -> dict[str, dict[str, Any]]:
        self._check()
        now = self._now()
        return {r: load for r, (until, load) in self.loads.items() if until > now}

    async def get_admin(self) -> dict[str, Any] | None:
        self._check()
        return self.admin

    async def put_admin(self, admin: dict[str, Any], only_if_missing: bool = False) -> bool:
        self._check()
        if only_if_missing and self.admin is not None:
            return False
        self.admin = admin
        return True

    async def append_prefix(self, batch: dict[str, Any], max_len: int) -> None:
        self._check()
        self.prefix_log.append(batch)
        while len(self.prefix_log) > max_len:
            self.prefix_log.popleft()

    async def read_prefix(self) -> list[dict[str, Any]]:
        self._check()
        return list(self.prefix_log)

    async def put_quota(
        self, replica: str, period: str, totals: dict[str, Any], ttl_s: float
    ) -> None:
        self._check()
        self.quotas[(period, replica)] = (self._now() + ttl_s, totals)

    async def get_quotas(self, period: str) -> dict[str, dict[str, Any]]:
        self._check()
        now = self._now()
        return {r: t for (p, r), (until, t) in self.quotas.items() if p == period and until > now}

    async def claim(self, request_id: str, replica: str, ttl_s: float) -> str:
        self._check()
        now = self._now()
        held = self.claims.get(request_id)
        if held is not None and held[0] > now:
            return held[1]
        self._claims_made += 1
        if self._claims_made % 1024 == 0:
            # Expired claims are forgotten as Redis forgets them: memory stays bounded by
            # the claims of one TTL.
            self.claims = {k: v for k, v in self.claims.items() if v[0] > now}
        self.claims[request_id] = (now + ttl_s, replica)
        return replica

    async def take_over_claim(self, request_id: str, dead: str, replica: str, ttl_s: float) -> str:
        self._check()
        now = self._now()
        held = self.claims.get(request_id)
        if held is not None and held[0] > now and held[1] != dead:
            return held[1]
        self.claims[request_id] = (now + ttl_s, replica)
        return replica

    async def release_claim(self, request_id: str, replica: str) -> None:
        self._check()
        held = self.claims.get(request_id)
        if held is not None and held[1] == replica:
            del self.claims[request_id]

    async def publish(self, message: dict[str, Any]) -> None:
        self._check()
        for q in self._subscribers:
            if self.delivery_delay_s > 0:
                asyncio.get_running_loop().call_later(self.delivery_delay_s, q.put_nowait, message)
            else:
                q.put_nowait(message)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        self._check()
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            yield SUBSCRIBED
            while True:
                try:
                    yield await asyncio.wait_for(q.get(), IDLE_TICK_S)
                except TimeoutError:
                    yield {}
        finally:
            self._subscribers.remove(q)

    async def aclose(self) -> None:
        return None
