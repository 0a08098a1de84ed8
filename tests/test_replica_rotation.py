"""Replicas of the control plane start their tie-break rotations and round-robin cursors at
their place among their live peers (`routing.rotation`), so replicas deciding at once spread
over the fleet instead of moving in lockstep; joining and leaving peers re-index them."""

from __future__ import annotations

import asyncio

from sage_cp_plugin.fleetshare.store import InMemoryFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.routing.load_balanced import LoadBalancedRouter
from sage_cp_plugin.routing.rotation import replica_slot, rotation_start
from sage_cp_plugin.routing.round_robin import RoundRobinRouter
from sage_cp_plugin.virtual.clock import run_virtual
from tests.helpers import fleet, item, replica_manager, state


def test_replica_index_is_the_place_among_sorted_live_ids() -> None:
    ids = ["host-b-7", "host-a-3", "host-c-1"]
    slots = [replica_slot(me, [p for p in ids if p != me]) for me in ids]
    assert slots == [(1, 3), (0, 3), (2, 3)]
    # Hearing itself among the peers (its own echo) changes nothing.
    assert replica_slot("host-a-3", ids) == (0, 3)
    assert replica_slot("solo", []) == (0, 1)


def test_replicas_at_the_same_turn_start_at_distinct_places() -> None:
    for n in (3, 4, 8, 9, 64):
        for count in (2, 3, 5):
            if count > n:
                continue
            for turn in range(2 * n):
                starts = {rotation_start(turn, n, (i, count)) for i in range(count)}
                assert len(starts) == count, (n, count, turn)


def test_each_replica_alone_still_visits_every_candidate() -> None:
    # Whatever share of the traffic a replica gets, its rotation covers the whole fleet
    # (a stride of `count` would skip instances when gcd(count, n) > 1).
    for n in (2, 4, 6, 8):
        for count in (2, 3):
            for i in range(count):
                assert {rotation_start(t, n, (i, count)) for t in range(n)} == set(range(n))


def test_replicas_in_turn_move_one_cursor() -> None:
    # A client spreading over the replicas in turn: request j reaches replica j % N at its
    # own turn j // N; together they visit the instances exactly as one process's cursor.
    for n in (4, 6, 8, 9):
        for count in (2, 3):
            seq = [rotation_start(j // count, n, (j % count, count)) for j in range(3 * n)]
            for lap in range(3):
                assert sorted(seq[lap * n : (lap + 1) * n]) == list(range(n)), (n, count, seq)


def test_one_process_rotation_is_unchanged() -> None:
    assert [rotation_start(t, 5, (0, 1)) for t in range(7)] == [0, 1, 2, 3, 4, 0, 1]


def test_round_robin_cursors_of_three_replicas_cover_the_fleet_like_one() -> None:
    states = [state(f"i{k}") for k in range(6)]
    picks: list[str] = []
    routers = [RoundRobinRouter() for _ in range(3)]
    views = [fleet(*states) for _ in range(3)]
    for i, v in enumerate(views):
        v.replica = (i, 3)
    # A client spreading over the replicas in turn: first one request to each, and so on.
    for turn in range(2):
        for r, v in zip(routers, views, strict=True):
            chosen = r.select(item(turn), states, v)
            assert chosen is not None
            r.on_dispatch(item(turn), chosen)
            picks.append(chosen.instance_id)
    assert sorted(picks) == sorted(s.instance_id for s in states)  # each instance once


def test_equal_instances_go_to_different_places_from_each_replica() -> None:
    states = [state(f"i{k}") for k in range(4)]
    v = fleet(*states)
    chosen = set()
    for i in range(3):
        it = item(1)
        it.replica = (i, 3)  # what admission copies from the replica's fleet view
        pick = LoadBalancedRouter().select(it, states, v)
        assert pick is not None
        chosen.add(pick.instance_id)
    assert len(chosen) == 3


def test_replicas_treat_costs_one_unheard_booking_apart_as_equal() -> None:
    """Four idle instances, two of them running one sequence fewer than the others: one
    process sends a request to the emptier ones; three replicas, each of which may not yet
    have heard of its two peers' last bookings, cannot tell one sequence apart and spread
    their simultaneous requests over all four by their rotations, as one process spreads
    successive ones (before, all three took the same emptiest instance)."""
    states = [state(f"i{k}") for k in range(4)]
    for s in states[:2]:
        s.decode_seqs = 1
    v = fleet(*states)
    alone = {LoadBalancedRouter().select(item(t), states, v).instance_id for t in range(4)}  # type: ignore[union-attr]
    assert alone == {"i2", "i3"}  # fewer sequences running: the cost decides, not the turn
    chosen = []
    for i in range(3):
        it = item(1)
        it.replica = (i, 3)
        pick = LoadBalancedRouter().select(it, states, v)
        assert pick is not None
        chosen.append(pick.instance_id)
    assert len(set(chosen)) == 3
    # A difference the peers' unheard bookings cannot explain still decides.
    for s in states[:2]:
        s.decode_seqs = 3
    it = item(1)
    it.replica = (0, 3)
    assert LoadBalancedRouter().select(it, states, v).instance_id in {"i2", "i3"}  # type: ignore[union-attr]


def test_replicas_at_once_spread_over_tied_instances_that_are_not_adjacent() -> None:
    """Eight instances, four of them (not side by side) with prefill queued: three replicas
    deciding at the same turn, each before hearing the others' bookings, take three different
    idle instances, at every turn. Before, each scanned from its own place in the rotation and
    kept the first tied instance it met: places between two idle instances all met the same
    one, so two or three replicas sent their requests to one instance together."""
    states = [state(f"i{k}") for k in range(8)]
    for k in (0, 1, 2, 6):
        states[k].peer_prefill_tokens = 20_000.0  # seconds of TTFT more: out of the tie
    v = fleet(*states)
    idle = {"i3", "i4", "i5", "i7"}
    for turn in range(8):
        chosen = []
        for i in range(3):
            it = item(turn)
            it.replica = (i, 3)
            pick = LoadBalancedRouter().select(it, states, v)
            assert pick is not None
            chosen.append(pick.instance_id)
        assert set(chosen) <= idle
        assert len(set(chosen)) == 3, (turn, chosen)


async def _join_and_leave() -> None:
    store = InMemoryFleetStateStore(delivery_delay_s=0.001)
    managers = [replica_manager() for _ in range(3)]
    shares = [FleetShare(m, store, f"r{i}", load_ttl_s=1.0) for i, m in enumerate(managers)]
    await shares[0].start()
    assert managers[0].fleet.replica == (0, 1)  # alone: one process's rotation
    for s in shares[1:]:
        await s.start()
    await asyncio.sleep(0.5)  # a few heartbeats and messages
    assert [m.fleet.replica for m in managers] == [(0, 3), (1, 3), (2, 3)]
    # r1 dies without a word: after the TTL the others re-index among the two left.
    for t in shares[1]._tasks:
        t.cancel()
    await asyncio.sleep(2.0)
    assert managers[0].fleet.replica == (0, 2)
    assert managers[2].fleet.replica == (1, 2)
    # It comes back: three again.
    await shares[1].stop()
    shares[1] = FleetShare(managers[1], store, "r1", load_ttl_s=1.0)
    await shares[1].start()
    await asyncio.sleep(0.5)
    assert [m.fleet.replica for m in managers] == [(0, 3), (1, 3), (2, 3)]
    for s in (shares[0], shares[1], shares[2]):
        await s.stop()


def test_peers_joining_and_leaving_re_index_the_replicas() -> None:
    run_virtual(_join_and_leave())
