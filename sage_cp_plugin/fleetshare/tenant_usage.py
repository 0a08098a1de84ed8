"""What replicas share of their tenants' usage: rate-limit windows (rate_limits.py) and
quota totals (quotas.py), so that a limit or a quota is one for all replicas.

- Rate-limit usage: a `usage` message with the tenants whose usage changed, as bucket ages
  (the hosts' clocks need not agree), at each admission (coalesced with the publish loop);
  the replica's whole usage rides in its load record (field `~usage`, with the wall time it
  was written) for a replica that starts later. While the store is unreachable a replica
  admits only its share of each limit (1/N of the replicas it last heard).
- Quota totals: a `quota` message with the replica's totals of the period as they change,
  and a record kept until the period ends (a replica started later, or all of them
  restarted, counts what was used).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sage_cp_plugin.admission import Admission

from .store import FleetStateStore, StoreUnavailable

# The field of a load record that holds the replica's rate-limit usage (not an instance id).
USAGE_FIELD = "~usage"


class TenantUsageShare:
    def __init__(self, admission: Admission, replica_id: str, on_change: Callable[[], None]):
        self.replica_id = replica_id
        self.limiter = admission.rate_limiter
        self.quotas = admission.quotas
        if self.limiter is not None:
            self.limiter.on_change = on_change
        if self.quotas is not None:
            self.quotas.on_change = on_change

    def lost(self, peers: int) -> None:
        """The store became unreachable: admit only this replica's share of each limit."""
        if self.limiter is not None:
            self.limiter.share = 1 + peers

    def reconnected(self) -> None:
        if self.limiter is not None:
            self.limiter.share = 1

    async def resync(
        self, store: FleetStateStore, loads: dict[str, dict[str, Any]], now: float
    ) -> None:
        """Learn what the peers' records hold (`loads`: their load records, just read)."""
        for replica, load in loads.items():
            self._learn_record(replica, load.get(USAGE_FIELD), now)
        if self.quotas is not None:
            for replica, totals in (await store.get_quotas(self.quotas.period)).items():
                if replica != self.replica_id:
                    self.quotas.learn(replica, totals)

    def _learn_record(self, replica: str, record: Any, now: float) -> None:
        if self.limiter is None or replica == self.replica_id or not isinstance(record, dict):
            return
        wall = record.get("wall")
        age = max(0.0, time.time() - wall) if isinstance(wall, int | float) else 0.0
        self.limiter.learn(replica, record, now, age_s=age)

    def on_message(self, kind: Any, sender: str, msg: dict[str, Any], now: float) -> None:
        """Apply a peer's `usage` or `quota` message (other kinds are not ours)."""
        if kind == "usage" and self.limiter is not None:
            self.limiter.learn(sender, msg, now)
        elif kind == "quota" and self.quotas is not None:
            self.quotas.learn(sender, msg)

    async def send(self, store: FleetStateStore, now: float) -> int:
        """Send what changed since the last call; returns the messages sent."""
        sent = 0
        if self.limiter is not None:
            changed = self.limiter.take_changed()
            usage = self.limiter.export(now, changed) if changed else None
            if usage is not None:
                await store.publish({"kind": "usage", "replica": self.replica_id, **usage})
                sent += 1
        q = self.quotas
        if q is not None and q.changed:
            quota_changed, q.changed = q.changed, set()
            message = q.export(quota_changed)
            record = q.export()
            # Kept a day past the period's end: a replica whose clock is a little behind
            # still finds it.
            ttl = record["ends_at"] - time.time() + 86_400
            try:
                await store.publish({"kind": "quota", "replica": self.replica_id, **message})
                sent += 1
                await store.put_quota(self.replica_id, record["period"], record, ttl)
            except StoreUnavailable:
                q.changed |= quota_changed  # sent again once the store answers
                raise
        return sent

    def record(self, load: dict[str, Any], now: float) -> dict[str, Any]:
        """This replica's load record, with its whole rate-limit usage for a new replica."""
        full = self.limiter.export(now) if self.limiter is not None else None
        return load if full is None else {**load, USAGE_FIELD: {**full, "wall": time.time()}}
