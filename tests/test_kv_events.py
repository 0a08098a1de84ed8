"""KV-cache events: wire format, the block index, gaps and replay, and the whole path over
real ZeroMQ sockets from the simulator's cache to the routers (issue 10 item 2)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import msgpack
import pytest

from sage_cp_plugin import ControlPlaneManager, RequestMetadata
from sage_cp_plugin.config import sim_instances
from sage_cp_plugin.kvevents.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    EventDecodeError,
    decode_batch,
    encode_batch,
)
from sage_cp_plugin.kvevents.index import BlockIndex, prompt_block_hashes
from sage_cp_plugin.kvevents.publisher import ZmqEventPublisher
from sage_cp_plugin.kvevents.stream import EventStream
from sage_cp_plugin.kvevents.tracker import KVEventTracker
from sage_cp_plugin.policies.base import make_item
from sage_cp_plugin.sim import SimFleet, SimInstanceConfig
from sage_cp_plugin.sim.tokens import token_id
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import ExecutionInstance

BS = 4


def stored(hashes: list[Any], parent: Any, tokens: list[int], bs: int = BS) -> BlockStored:
    return BlockStored(hashes, parent, tokens, bs)


# -- wire format -------------------------------------------------------------------------------
def test_batch_round_trips_in_vllms_layout() -> None:
    batch = EventBatch(
        1.5,
        [stored([b"h1", b"h2"], None, list(range(8))), BlockRemoved([b"h1"]), AllBlocksCleared()],
        data_parallel_rank=0,
    )
    raw = msgpack.unpackb(encode_batch(batch), raw=False)
    # vLLM 0.32: array-like batch [ts, events, dp_rank]; events are msgspec tagged maps.
    assert raw[0] == 1.5 and raw[2] == 0
    assert raw[1][0]["type"] == "BlockStored" and raw[1][0]["token_ids"] == list(range(8))
    assert raw[1][0]["block_hashes"] == [b"h1", b"h2"] and raw[1][0]["parent_block_hash"] is None
    assert raw[1][1] == {"type": "BlockRemoved", "block_hashes": [b"h1"], "medium": "GPU"}
    assert raw[1][2] == {"type": "AllBlocksCleared"}
    assert decode_batch(encode_batch(batch)) == batch


def test_tagged_array_events_of_older_releases_are_read() -> None:
    payload = msgpack.packb([3.0, [["BlockStored", [9], None, [1, 2, 3, 4], 4, None, "GPU"]]])
    assert decode_batch(payload).events == [BlockStored([9], None, [1, 2, 3, 4], 4)]


def test_map_encoded_batches_and_unknown_events_are_read() -> None:
    payload = msgpack.packb(
        {
            "ts": 2.0,
            "events": [
                {"type": "BlockStored", "block_hashes": [7], "parent_block_hash": None,
                 "token_ids": [1, 2, 3, 4], "block_size": 4, "medium": "GPU", "lora_name": None},
                {"type": "SomethingNew", "x": 1},
            ],
        }
    )  # fmt: skip
    batch = decode_batch(payload)
    assert batch.events == [BlockStored([7], None, [1, 2, 3, 4], 4)]


def test_bad_payloads_raise_a_clear_error() -> None:
    with pytest.raises(EventDecodeError, match=r"not msgpack|not an event batch"):
        decode_batch(b"\xc1garbage")
    bad = msgpack.packb([0.0, [["BlockStored", [1], None, [1, 2], 4]]])
    with pytest.raises(EventDecodeError, match=r"2 token ids for 1 blocks of 4"):
        decode_batch(bad)


# -- the index ---------------------------------------------------------------------------------
def test_index_keys_blocks_by_content_so_engines_with_different_hashes_agree() -> None:
    idx = BlockIndex()
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    # Two engines name the same content differently (vLLM's hash depends on its seed).
    idx.apply(("a", 0), stored([b"a1", b"a2"], None, tokens))
    idx.apply(("b", 0), stored([11], None, tokens[:4]))
    idx.apply(("b", 0), stored([12], 11, tokens[4:]))
    req = prompt_block_hashes([*tokens, 9, 9, 9, 9], BS)
    assert idx.match(req, ["a", "b", "c"]) == {"a": 2, "b": 2, "c": 0}
    # Different content in block 2 on b: its match stops after block 1.
    idx.apply(("b", 0), BlockRemoved([12]))
    idx.apply(("b", 0), stored([13], 11, [0, 0, 0, 0]))
    assert idx.match(req, ["a", "b"]) == {"a": 2, "b": 1}


def test_removal_of_a_parent_hides_its_children_and_duplicates_are_counted() -> None:
    idx = BlockIndex()
    idx.apply(("a", 0), stored([1, 2], None, list(range(8))))
    idx.apply(("a", 0), stored([1], None, list(range(4))))  # a second copy of block 1
    req = prompt_block_hashes(list(range(8)), BS)
    idx.apply(("a", 0), BlockRemoved([1]))
    assert idx.match(req, ["a"]) == {"a": 2}  # one copy left
    idx.apply(("a", 0), BlockRemoved([1]))
    assert idx.match(req, ["a"]) == {"a": 0}  # child unreachable, as in the engine
    assert idx.blocks_of("a") == 1


def test_unknown_parent_is_not_guessed_and_offloaded_media_do_not_count() -> None:
    idx = BlockIndex()
    idx.apply(("a", 0), stored([5], 4, [1, 2, 3, 4]))  # parent 4 never seen
    idx.apply(("a", 0), BlockStored([6], None, [1, 2, 3, 4], BS, medium="CPU"))
    assert idx.blocks_of("a") == 0
    assert idx.stats.unresolved == 1 and idx.stats.other_medium == 1


def test_all_blocks_cleared_and_instance_removal() -> None:
    idx = BlockIndex()
    idx.apply(("a", 0), stored([1], None, [1, 2, 3, 4]))
    idx.apply(("b", 0), stored([1], None, [1, 2, 3, 4]))
    req = prompt_block_hashes([1, 2, 3, 4], BS)
    idx.apply(("a", 0), AllBlocksCleared())
    assert idx.match(req, ["a", "b"]) == {"a": 0, "b": 1}
    idx.remove_instance("b")
    assert idx.match(req, ["b"]) == {"b": 0} and idx.block_size("b") is None


# -- sequence numbers ----------------------------------------------------------------------------
def _b(*events: Any) -> EventBatch:
    return EventBatch(0.0, list(events))


def test_gap_is_closed_by_replay() -> None:
    idx = BlockIndex()
    s = EventStream(idx, ("a", 0))
    b0 = _b(stored([1], None, [1, 2, 3, 4]))
    b1 = _b(stored([2], 1, [5, 6, 7, 8]))
    b2 = _b(BlockRemoved([2]))
    assert s.on_live(0, b0) is None
    assert s.on_live(2, b2) == 1  # batch 1 lost
    s.on_replay(1, [(1, b1), (2, b2)])
    assert s.on_live(2, b2) is None  # already applied from the replay
    assert idx.blocks_of("a") == 1 and s.stats.replays_ok == 1 and s.next_seq == 3


def test_unrecoverable_gap_clears_the_source() -> None:
    idx = BlockIndex()
    s = EventStream(idx, ("a", 0))
    s.on_live(0, _b(stored([1], None, [1, 2, 3, 4])))
    assert s.on_live(5, _b()) == 1
    s.on_replay(1, [(3, _b()), (4, _b())])  # publisher no longer has batch 1
    assert idx.blocks_of("a") == 0 and s.stats.replays_failed == 1
    assert s.on_live(5, _b(stored([9], None, [4, 3, 2, 1]))) is None
    assert idx.blocks_of("a") == 1


def test_publisher_restart_clears_and_follows_the_new_numbers() -> None:
    idx = BlockIndex()
    s = EventStream(idx, ("a", 0))
    for i in range(3):
        s.on_live(i, _b(stored([i + 1], i or None, [i] * 4)))
    assert s.on_live(0, _b(stored([7], None, [7] * 4))) is None  # seq back to 0: restarted
    assert idx.blocks_of("a") == 1 and s.stats.restarts == 1


# -- over real sockets ---------------------------------------------------------------------------
async def test_late_subscriber_catches_up_by_replay_and_without_it_starts_clean() -> None:
    pub = ZmqEventPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    pub.start()
    try:
        # Published before anyone listens: only the replay endpoint still has them.
        pub.publish(_b(stored([1], None, [1, 2, 3, 4])))
        pub.publish(_b(stored([2], 1, [5, 6, 7, 8])))
        req = prompt_block_hashes(list(range(1, 13)), BS)
        with_replay = KVEventTracker()
        with_replay.add_instance(
            ExecutionInstance(
                instance_id="a",
                kv_events_endpoint=pub.endpoint,
                kv_events_replay_endpoint=pub.replay_endpoint,
            )
        )
        no_replay = KVEventTracker()
        no_replay.add_instance(ExecutionInstance(instance_id="b", kv_events_endpoint=pub.endpoint))
        await with_replay.start()
        await no_replay.start()
        # ZeroMQ subscriptions take a moment to propagate: publish until both have seen a batch.
        batch3 = _b(stored([3], 2, [9, 10, 11, 12]))

        async def keep_publishing() -> None:
            while not (with_replay.is_live("a") and no_replay.is_live("b")):
                pub.publish(_b())
                await asyncio.sleep(0.01)  # pacing the publisher, not synchronising the test

        pacer = asyncio.create_task(keep_publishing())
        await with_replay.wait_for(lambda: with_replay.is_live("a"), 10)
        await no_replay.wait_for(lambda: no_replay.is_live("b"), 10)
        await pacer
        pub.publish(batch3)
        await with_replay.wait_for(lambda: with_replay.index.blocks_of("a") == 3, 10)
        await no_replay.wait_for(lambda: no_replay.status("b")["batches"] >= 1, 10)
        assert with_replay.index.match(req, ["a"]) == {"a": 3}
        assert with_replay.status("a")["replays_ok"] >= 1
        # Without replay the first two blocks are unknown; block 3's parent too: nothing held.
        assert no_replay.index.match(req, ["b"]) == {"b": 0}
        await with_replay.stop()
        await no_replay.stop()
    finally:
        await pub.aclose()


def _prompt(*parts: tuple[str, int]) -> str:
    return " ".join(f"{w}{i}" for w, n in parts for i in range(n))


async def _subscribed(manager: ControlPlaneManager, fleet: SimFleet) -> None:
    """Wait until each subscription is live (ZeroMQ subscriptions propagate asynchronously):
    make the simulators publish (an empty cache's reset) until every one has been heard."""
    tracker = manager.kv_events

    async def poke() -> None:
        async with httpx.AsyncClient() as c:
            while not all(tracker.is_live(f"sim-{m.index}") for m in fleet.members):
                for m in fleet.members:
                    await c.post(f"{m.url}/reset_prefix_cache")

    await asyncio.wait_for(poke(), 10)


async def _caught_up(manager: ControlPlaneManager, fleet: SimFleet) -> None:
    """Wait until every batch each simulator published has been applied."""
    tracker = manager.kv_events

    def done() -> bool:
        return all(
            tracker.status(f"sim-{m.index}").get("batches", 0) >= m.sim.kv_publisher.published
            for m in fleet.members
            if m.sim.kv_publisher is not None
        )

    await tracker.wait_for(done, 10)


def _events_fleet(n: int, blocks: int) -> list[SimInstanceConfig]:
    return [
        SimInstanceConfig(
            time_scale=0.0,
            seed=i,
            block_size=16,
            num_kv_blocks=blocks,
            kv_events_endpoint="tcp://127.0.0.1:0",
            kv_events_replay_endpoint="tcp://127.0.0.1:0",
        )
        for i in range(n)
    ]


async def test_index_predicts_the_simulators_prefix_hits_under_eviction() -> None:
    """Each request's hits predicted from the index equal what the simulator's cache served,
    while the cache (12 blocks of 16 tokens) keeps evicting."""
    async with SimFleet(_events_fleet(1, 12)) as fleet:
        manager = ControlPlaneManager(scheduling_policy="fifo", routing_strategy="prefix_aware",
                                      enable_pd_separation=False)  # fmt: skip
        (inst,) = sim_instances(fleet.members)
        manager.register_instance(inst)
        await manager.start()
        try:
            await _subscribed(manager, fleet)
            state = manager.fleet.states["sim-0"]
            sim = fleet[0].sim
            prompts = [
                _prompt(("sys", 40), ("a", 20)),  # 60 tokens: 3 full blocks
                _prompt(("sys", 40), ("b", 30)),  # shares 2 blocks
                _prompt(("sys", 40), ("a", 20)),  # all of prompt 0 cached but the last token
                _prompt(("x", 120)),  # 7 blocks + output: evicts most of the cache
                _prompt(("sys", 40), ("a", 20)),  # partly evicted now
                _prompt(("x", 120)),
                _prompt(("y", 100)),
                _prompt(("x", 64)),
            ]
            checked = 0
            async with httpx.AsyncClient(base_url=fleet[0].url) as client:
                for i, text in enumerate(prompts):
                    await _caught_up(manager, fleet)
                    item = make_item(RequestMetadata(prompt=text, max_tokens=20), now=0.0, seq=i)
                    manager.kv_events.tokenize(item, [state])
                    (predicted,) = manager.kv_events.view.cached_tokens(item, [state])
                    before = sim.engine.counters.prefix_cache_hits
                    r = await client.post("/v1/completions",
                                          json={"prompt": text, "max_tokens": 20})  # fmt: skip
                    assert r.status_code == 200
                    actual = sim.engine.counters.prefix_cache_hits - before
                    assert predicted == actual, f"request {i}: index {predicted}, sim {actual}"
                    checked += actual > 0
            assert checked >= 3  # hits happened, including after evictions
            assert manager.kv_events.index.stats.removed > 0
        finally:
            await manager.stop()


async def test_router_follows_evictions_that_the_approximate_index_cannot_see() -> None:
    """prefix_aware sends a request where its prefix really is: sim-0 received the prefix
    through the router, then evicted it; sim-1 got it directly. With events the router picks
    sim-1 (a cache hit); without them, sim-0 (a miss)."""
    shared = _prompt(("doc", 96))
    for events in (True, False):
        configs = _events_fleet(2, 10)
        if not events:
            configs = [c.model_copy(update={"kv_events_endpoint": None}) for c in configs]
        async with SimFleet(configs) as fleet:
            manager = ControlPlaneManager(scheduling_policy="fifo",
                                          routing_strategy="prefix_aware",
                                          enable_pd_separation=False)  # fmt: skip
            inst0, inst1 = sim_instances(fleet.members)
            manager.register_instance(inst0)  # alone: the first request goes there
            await manager.start()
            try:
                first = await manager.generate(shared, max_tokens=4)
                manager.register_instance(inst1)
                if events:
                    await _subscribed(manager, fleet)
                async with httpx.AsyncClient() as c:
                    # Evict it on sim-0 (160-token prompt on a 160-token cache), warm sim-1.
                    await c.post(f"{fleet[0].url}/v1/completions",
                                 json={"prompt": _prompt(("z", 150)), "max_tokens": 4})  # fmt: skip
                    await c.post(f"{fleet[1].url}/v1/completions",
                                 json={"prompt": shared, "max_tokens": 4})  # fmt: skip
                if events:
                    await _caught_up(manager, fleet)
                    assert (
                        manager.get_status()["instances"]["sim-1"]["kv_cache"]["mode"] == "events"
                    )
                hits = [m.sim.engine.counters.prefix_cache_hits for m in fleet.members]
                res = await manager.generate(shared, max_tokens=4)
                gained = [m.sim.engine.counters.prefix_cache_hits - h
                          for m, h in zip(fleet.members, hits, strict=True)]  # fmt: skip
                assert first.instance_id == "sim-0"
                if events:
                    assert res.instance_id == "sim-1" and gained[1] == 80  # 5 of 6 blocks
                else:
                    assert manager.get_status()["instances"]["sim-0"]["kv_cache"]["mode"] == (
                        "approximate"
                    )
                    assert res.instance_id == "sim-0" and gained[0] == 0
            finally:
                await manager.stop()


async def test_all_blocks_cleared_from_the_simulator_empties_its_entries() -> None:
    async with SimFleet(_events_fleet(1, 32)) as fleet:
        manager = ControlPlaneManager(scheduling_policy="fifo", enable_pd_separation=False)
        for inst in sim_instances(fleet.members):
            manager.register_instance(inst)
        await manager.start()
        try:
            await _subscribed(manager, fleet)
            await manager.generate(_prompt(("w", 64)), max_tokens=4)
            await _caught_up(manager, fleet)
            assert manager.kv_events.index.blocks_of("sim-0") >= 4
            async with httpx.AsyncClient() as c:
                r = await c.post(f"{fleet[0].url}/reset_prefix_cache")
            assert r.status_code == 200
            await _caught_up(manager, fleet)
            assert manager.kv_events.index.blocks_of("sim-0") == 0
            assert manager.kv_events.index.stats.cleared >= 1
            await manager.unregister_instance("sim-0")
            assert manager.kv_events.mode("sim-0") == "approximate"
        finally:
            await manager.stop()


def test_sim_token_ids_match_what_the_simulator_publishes() -> None:
    from sage_cp_plugin.kvevents.prompt_tokens import SimPromptTokenizer

    req = RequestMetadata(messages=[{"role": "user", "content": "hi there"}])
    ids = SimPromptTokenizer().token_ids(req)
    assert ids == [token_id(w) for w in ["<|user|>", "hi", "there", "<|assistant|>"]]
    assert SimPromptTokenizer().token_ids(RequestMetadata(input="x")) is None


def test_instance_rejects_a_non_zmq_endpoint() -> None:
    with pytest.raises(ValueError, match="not a ZeroMQ address"):
        ExecutionInstance(instance_id="a", kv_events_endpoint="localhost:5557")


_ = InstanceState  # re-exported for type checkers of the helpers above


async def test_in_process_fleet_feeds_the_same_index_without_sockets() -> None:
    from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec

    cfg = SimInstanceConfig(time_scale=0.0, block_size=16, num_kv_blocks=64)
    fleet = InProcessFleet([MemberSpec(cfg, kv_events=True), MemberSpec(cfg.model_copy())])
    manager = ControlPlaneManager(scheduling_policy="fifo", routing_strategy="prefix_aware",
                                  enable_pd_separation=False,
                                  transport_factory=fleet.transport_factory)  # fmt: skip
    manager.register_instance(fleet.instances[0])  # alone at first: the prefix goes there
    fleet.attach_kv_events(manager.kv_events)
    await manager.start()
    try:
        text = _prompt(("doc", 100))
        assert (await manager.generate(text, max_tokens=2)).instance_id == "sim-0"
        manager.register_instance(fleet.instances[1])
        assert manager.kv_events.mode("sim-0") == "events"
        assert manager.kv_events.mode("sim-1") == "approximate"
        assert manager.kv_events.index.blocks_of("sim-0") == 6  # 100 prompt + 1 output // 16
        again = await manager.generate(text, max_tokens=2)
        assert again.instance_id == "sim-0"
        assert fleet.sim(0).engine.counters.prefix_cache_hits == 96
    finally:
        await manager.stop()
        await fleet.aclose()


async def test_sage_cp_sim_publishes_events_and_gateway_metrics_show_the_mode() -> None:
    """`sage-cp sim --kv-events-port` in its own process; the coordinator subscribes over TCP
    and the gateway's Prometheus text says which instance is in which mode."""
    import os
    import socket
    import sys

    from sage_cp_plugin.entrypoints.gateway.metrics import GatewayMetrics

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    http_port, kv_port = free(), free()
    cmd = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "sim", "--port",
           str(http_port), "--time-scale", "0", "--kv-events-port", str(kv_port)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode()
            if "ready" in line:
                break
            assert f"kv_events=tcp://127.0.0.1:{kv_port}" in line
        manager = ControlPlaneManager(scheduling_policy="fifo", enable_pd_separation=False)
        manager.register_instance(ExecutionInstance(
            instance_id="cli", port=http_port, host="127.0.0.1", model_name="sim-model",
            kv_events_endpoint=f"tcp://127.0.0.1:{kv_port}",
            kv_events_replay_endpoint=f"tcp://127.0.0.1:{kv_port + 1}", tokenizer="sim"))  # fmt: skip
        manager.register_instance(ExecutionInstance(instance_id="plain", port=1,
                                                    model_name="other"))  # fmt: skip
        await manager.start()
        try:
            tracker = manager.kv_events
            # A batch that beat the subscription comes back by replay once the next one
            # shows the gap: send fresh 64-token prompts until the index holds 4 blocks.
            for n in range(5):
                await manager.generate(_prompt((f"q{n}_", 64)), max_tokens=2,
                                       model_name="sim-model")  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await tracker.wait_for(lambda: tracker.index.blocks_of("cli") >= 4, 2)
                    break
            assert tracker.index.blocks_of("cli") >= 4
            body = GatewayMetrics(manager).render().decode()
            mode = "sage_cp_instance_kv_cache_mode"
            assert f'{mode}{{instance="cli",mode="events",model="sim-model"' in body
            assert f'{mode}{{instance="plain",mode="approximate",model="other"' in body
            for line in body.splitlines():
                if line.startswith(mode):  # 1 for the instance's mode, 0 for the other
                    on = ('"cli",mode="events"' in line) or ('"plain",mode="approximate"' in line)
                    assert line.endswith(" 1.0" if on else " 0.0"), line
            assert 'sage_cp_instance_kv_event_blocks{instance="cli"' in body
        finally:
            await manager.stop()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def test_prompts_in_flight_count_as_held_until_they_finish() -> None:
    """The engine reports blocks once computed; a request queued behind one still prefilling
    the same prefix on that engine will hit it, so the view counts in-flight prompts."""
    from sage_cp_plugin.kvevents.view import ExactPrefixView

    idx = BlockIndex()
    idx.apply(("a", 0), stored([1], None, [9, 9, 9, 9]))  # announces block size 4
    view = ExactPrefixView(idx, lambda iid: True)
    st = InstanceState(ExecutionInstance(instance_id="a"))

    def item(seq: int) -> Any:
        it = make_item(RequestMetadata(prompt="p", max_tokens=1), now=0.0, seq=seq)
        it.prompt_token_ids = list(range(13))  # 3 full blocks usable
        return it

    first, second = item(1), item(2)
    assert view.cached_tokens(second, [st]) == [0]
    view.on_dispatch(first, "a")
    assert view.cached_tokens(second, [st]) == [12]
    view.on_finish(first, "a")  # finished without the engine reporting the blocks: not held
    assert view.cached_tokens(second, [st]) == [0]


def test_fleet_view_is_exact_where_events_are_live_and_approximate_elsewhere() -> None:
    from sage_cp_plugin.kvevents.view import EventsOrApproximateView, ExactPrefixView
    from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache

    idx = BlockIndex()
    tokens = list(range(40))
    idx.apply(("ev", 0), stored([1, 2], None, tokens[:8]))  # "ev" holds 8 of 40 tokens
    approx = ApproximatePrefixCache(chunk_chars=8)
    view = EventsOrApproximateView(ExactPrefixView(idx, lambda iid: iid == "ev"), approx)
    ev, ap = (InstanceState(ExecutionInstance(instance_id=i)) for i in ("ev", "ap"))
    req = RequestMetadata(prompt="x" * 80, max_tokens=1)
    sent = make_item(req, now=0.0, seq=1)
    view.on_dispatch(sent, "ap")  # the approximate view learns "ap" got this prompt
    item = make_item(req.model_copy(update={"request_id": "again"}), now=0.0, seq=2)
    item.prompt_token_ids = tokens
    ev_tokens, ap_tokens = view.cached_tokens(item, [ev, ap])
    assert ev_tokens == round(8 / 40 * item.input_tokens)  # exact share, in input_tokens units
    assert ap_tokens > 0  # what was sent there
    # Without token ids (a chat request to real vLLM) every instance is approximate.
    item.prompt_token_ids = None
    assert view.cached_tokens(item, [ev, ap])[0] == 0


async def test_data_parallel_ranks_publish_apart_and_clear_apart(tmp_path: Any) -> None:
    """vLLM offsets each data-parallel rank's endpoint; one subscriber per rank, one index."""
    base = f"ipc://{tmp_path}/kv.sock"
    pubs = [ZmqEventPublisher(base, data_parallel_rank=r) for r in (0, 1)]
    assert pubs[1].endpoint == f"{base}_dp1"
    tracker = KVEventTracker()
    tracker.add_instance(
        ExecutionInstance(instance_id="dp", kv_events_endpoint=base, data_parallel_size=2)
    )
    await tracker.start()
    try:
        req = prompt_block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 0], BS)
        r0 = _b(stored([10], None, [1, 2, 3, 4]))
        r1 = _b(stored([20], None, [1, 2, 3, 4]), stored([21], 20, [5, 6, 7, 8]))

        async def publish_until_applied() -> None:
            # Subscriptions propagate asynchronously; a first batch lost to that comes back
            # as a gap the next one shows (no replay endpoint here: the rank is cleared).
            while tracker.index.blocks_of("dp") < 3:
                for p, b in zip(pubs, (r0, r1), strict=True):
                    p.publish(b)
                with contextlib.suppress(TimeoutError):
                    await tracker.wait_for(lambda: tracker.index.blocks_of("dp") >= 3, 0.5)

        await asyncio.wait_for(publish_until_applied(), 10)
        assert tracker.index.match(req, ["dp"]) == {"dp": 2}  # rank 1 holds both blocks
        pubs[1].publish(_b(AllBlocksCleared()))
        await tracker.wait_for(lambda: tracker.index.match(req, ["dp"])["dp"] == 1, 5)
    finally:
        await tracker.stop()
        for p in pubs:
            await p.aclose()
