"""Admin changes reach every replica even when pub/sub loses their message, on the virtual
clock with the in-memory store (the Redis path is in test_fleetshare_redis.py).

Redis pub/sub delivers at most once: a message published while a replica's SUBSCRIBE is
still on its way, or while redis-py silently re-subscribes after a connection blip, is
gone. A replica must still end up with the admin record the store holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sage_cp_plugin.fleetshare.store import InMemoryFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.types import ExecutionInstance
from sage_cp_plugin.virtual.clock import run_virtual
from tests.helpers import replica_manager


class SlowSecondSubscription(InMemoryFleetStateStore):
    """The second subscription takes effect only after `delay_s` (a SUBSCRIBE in flight)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.subscriptions = 0

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        self.subscriptions += 1
        if self.subscriptions == 2:
            await asyncio.sleep(self.delay_s)
        async for msg in super().subscribe():
            yield msg


class LosesAdminMessages(InMemoryFleetStateStore):
    """Every admin message is lost in transit; the record is written."""

    async def publish(self, message: dict[str, Any]) -> None:
        if message.get("kind") != "admin":
            await super().publish(message)


async def _change_during_subscribe() -> None:
    store = SlowSecondSubscription(delay_s=0.5)
    m0, m1 = replica_manager(), replica_manager()
    s0 = FleetShare(m0, store, "r0")
    s1 = FleetShare(m1, store, "r1")
    s1.admin_check_interval_s = 3600.0  # only the read after subscribing can repair it
    await s0.start()
    await s1.start()  # has read the shared state; its subscription is not live yet
    await asyncio.sleep(0.1)
    m0.update_policy("priority")
    assert await s0.announce_admin(policy=("priority", {}))  # r1 is not subscribed: lost
    await asyncio.sleep(1.0)  # the subscription went live at 0.5 s
    assert m1.policy_name == "priority"
    await s0.stop()
    await s1.stop()


def test_change_announced_while_a_replica_subscribes_reaches_it() -> None:
    run_virtual(_change_during_subscribe())


async def _lost_message() -> None:
    store = LosesAdminMessages()
    m0, m1 = replica_manager(), replica_manager()
    s0 = FleetShare(m0, store, "r0")
    s1 = FleetShare(m1, store, "r1")
    await s0.start()
    await s1.start()
    await asyncio.sleep(0.3)
    m0.update_policy("priority")
    assert await s0.announce_admin(policy=("priority", {}))
    t0 = asyncio.get_running_loop().time()
    while m1.policy_name != "priority":
        await asyncio.sleep(0.01)
        assert asyncio.get_running_loop().time() - t0 <= s1.admin_check_interval_s + 0.3
    # Applied once: the record is not re-applied at every check.
    applied = s1.status.admin_applied
    await asyncio.sleep(5.0)
    assert s1.status.admin_applied == applied and m1.policy_name == "priority"
    await s0.stop()
    await s1.stop()


def test_lost_admin_message_is_repaired_from_the_record_within_a_second() -> None:
    run_virtual(_lost_message())


async def _one_registry() -> None:
    store = InMemoryFleetStateStore(delivery_delay_s=0.001)
    m0, m1 = replica_manager(), replica_manager()
    s0, s1 = FleetShare(m0, store, "r0"), FleetShare(m1, store, "r1")
    await s0.start()
    await s1.start()
    await asyncio.sleep(0.1)
    # Registered through replica 0's admin API (the gateway announces it so) ...
    new = ExecutionInstance(instance_id="b", host="127.0.0.1", port=10, model_name="m")
    m0.register_instance(new.model_copy())  # a copy per registry, as from a request body
    assert await s0.announce_admin(instance=("b", new.model_dump(mode="json")))
    await asyncio.sleep(0.05)
    assert m1.fleet.get("b") is not None and m1.fleet.states["b"].instance == new
    # ... a replica started later has it from the admin record ...
    m2 = replica_manager()
    s2 = FleetShare(m2, store, "r2")
    await s2.start()
    assert m2.fleet.get("b") is not None
    # ... and removed through replica 1 (here the config's instance), gone everywhere.
    await m1.unregister_instance("a")
    assert await s1.announce_admin(instance=("a", None))
    await asyncio.sleep(0.05)
    assert sorted(m0.fleet.states) == sorted(m2.fleet.states) == ["b"]
    # Registered again after a drain: the old drain no longer applies to it.
    assert await s0.announce_admin(drain=("b", False))
    await asyncio.sleep(0.05)
    assert m1.fleet.states["b"].draining
    await m1.unregister_instance("b")
    assert await s1.announce_admin(instance=("b", None))
    await asyncio.sleep(0.05)
    m1.register_instance(new.model_copy())
    assert await s1.announce_admin(instance=("b", new.model_dump(mode="json")))
    await asyncio.sleep(0.05)
    assert [m.fleet.states["b"].draining for m in (m0, m1, m2)] == [False] * 3
    for s in (s0, s1, s2):
        await s.stop()


def test_instances_registered_or_removed_on_one_replica_are_so_on_all() -> None:
    run_virtual(_one_registry())
