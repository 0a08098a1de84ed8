"""`RedisFleetStateStore`: the shared state of replicas on several hosts, in Redis.

Keys (all under one namespace, default `sagecp`):
- `{ns}:load:{replica}` a string (JSON) written with PX = TTL: a replica's bookings; a dead
  replica's key expires, and with it its load (AIBrix keeps prefix blocks the same way, SETEX);
- `{ns}:admin` a string (JSON): policy, router, drained instances; `SET NX` when a replica
  seeds it after Redis came back empty (first binding wins, as Dynamo's session affinity);
- `{ns}:prefix` a capped stream (XADD MAXLEN ~) of dispatch batches, replayed by a new replica;
- `{ns}:quota:{period}:{replica}` a string (JSON): the replica's quota usage per tenant in
  that period, expiring when the period ends (plus a day), so a replica started later counts it;
- `{ns}:claim:{request_id}` a string with PX: which replica runs a request id; claimed,
  taken over from a dead replica and released by Lua scripts, one round trip each;
- channel `{ns}:events`: every message (load, admin, prefix) to every replica.

Every Redis error becomes `StoreUnavailable`, so callers need to know one failure only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - the extra is part of .[dev]
    raise ImportError(
        "sharing state through Redis needs the 'redis' package: pip install 'sage-cp-plugin[redis]'"
    ) from exc

from .store import IDLE_TICK_S, SUBSCRIBED, StoreUnavailable

# Claim the id unless held; the holder either way (SET NX + GET in one round trip: `SET NX
# GET` needs Redis 7, the bundled test server is 6.2).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
# Move the claim from a dead holder (ARGV[1]) to ARGV[2]; the holder afterwards.
_TAKE_OVER = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return ARGV[2]
"""
# Delete the claim only if ARGV[1] holds it (a claim taken over meanwhile stays).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisFleetStateStore:
    def __init__(self, url: str, namespace: str = "sagecp", timeout_s: float = 0.5) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"a Redis URL starts with redis://, rediss:// or unix://, got {url!r}")
        self.url = url
        self.ns = namespace
        # Short timeouts: a replica must keep serving on its own view when Redis is gone,
        # not hang a sync loop on a dead socket.
        self.redis = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            health_check_interval=5,
        )
        self._claim = self.redis.register_script(_CLAIM)
        self._take_over = self.redis.register_script(_TAKE_OVER)
        self._release = self.redis.register_script(_RELEASE)

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis at {self.url}: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        await self._do(self.redis.ping())

    async def put_load(self, replica: str, load: dict[str, Any], ttl_s: float) -> None:
        px = max(1, int(ttl_s * 1000))
        await self._do(self.redis.set(self._k("load", replica), json.dumps(load), px=px))

    async def get_loads(self) -> dict[str, dict[str, Any]]:
        prefix = self._k("load", "")
        keys = await self._do(self._scan(prefix + "*"))
        if not keys:
            return {}
        values = await self._do(self.redis.mget(keys))
        return {k[len(prefix) :]: json.loads(v) for k, v in zip(keys, values, strict=True) if v}

    async def _scan(self, pattern: str) -> list[str]:
        return [k async for k in self.redis.scan_iter(match=pattern, count=100)]

    async def get_admin(self) -> dict[str, Any] | None:
        raw = await self._do(self.redis.get(self._k("admin")))
        return json.loads(raw) if raw else None

    async def put_admin(self, admin: dict[str, Any], only_if_missing: bool = False) -> bool:
        ok = await self._do(self.redis.set(self._k("admin"), json.dumps(admin), nx=only_if_missing))
        return bool(ok)

    async def append_prefix(self, batch: dict[str, Any], max_len: int) -> None:
        await self._do(
            self.redis.xadd(
                self._k("prefix"), {"b": json.dumps(batch)}, maxlen=max_len, approximate=True
            )
        )

    async def read_prefix(self) -> list[dict[str, Any]]:
        entries = await self._do(self.redis.xrange(self._k("prefix")))
        return [json.loads(fields["b"]) for _, fields in entries]

    async def put_quota(
        self, replica: str, period: str, totals: dict[str, Any], ttl_s: float
    ) -> None:
        px = max(1, int(ttl_s * 1000))
        await self._do(self.redis.set(self._k("quota", period, replica), json.dumps(totals), px=px))

    async def get_quotas(self, period: str) -> dict[str, dict[str, Any]]:
        prefix = self._k("quota", period, "")
        keys = await self._do(self._scan(prefix + "*"))
        if not keys:
            return {}
        values = await self._do(self.redis.mget(keys))
        return {k[len(prefix) :]: json.loads(v) for k, v in zip(keys, values, strict=True) if v}

    async def claim(self, request_id: str, replica: str, ttl_s: float) -> str:
        px = max(1, int(ttl_s * 1000))
        held = await self._do(self._claim(keys=[self._k("claim", request_id)], args=[replica, px]))
        return str(held)

    async def take_over_claim(self, request_id: str, dead: str, replica: str, ttl_s: float) -> str:
        px = max(1, int(ttl_s * 1000))
        key = self._k("claim", request_id)
        return str(await self._do(self._take_over(keys=[key], args=[dead, replica, px])))

    async def release_claim(self, request_id: str, replica: str) -> None:
        await self._do(self._release(keys=[self._k("claim", request_id)], args=[replica]))

    async def publish(self, message: dict[str, Any]) -> None:
        await self._do(self.redis.publish(self._k("events"), json.dumps(message)))

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        # Subscribe confirmations are kept: Redis sends one when the SUBSCRIBE took effect
        # (from then on nothing published is missed) and again after redis-py re-subscribed
        # on a new connection by itself (messages in the gap are lost: pub/sub is at-most-once).
        pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        try:
            await self._do(pubsub.subscribe(self._k("events")))
            while True:
                msg = await self._do(pubsub.get_message(timeout=IDLE_TICK_S))
                kind = msg.get("type") if msg is not None else None
                if kind == "message":
                    yield json.loads(msg["data"])
                elif kind == "subscribe":
                    yield SUBSCRIBED
                else:
                    yield {}  # idle tick: the listener regains control (see FleetStateStore)
        finally:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (RedisError, OSError):
                pass

    async def aclose(self) -> None:
        try:
            await self.redis.aclose()
        except (RedisError, OSError):
            pass
