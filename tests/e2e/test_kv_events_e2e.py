"""The KV-event index against real vLLM: does it match what vLLM reports as prefix-cache hits?

One tiny-llama instance with 8 KV blocks of 128 tokens publishes its KV-cache events
(`--kv-events-config`, ZeroMQ PUB on an ipc socket, replay on 127.0.0.1). The control plane
subscribes, tokenizes each prompt locally with the model's tokenizer.json, and predicts the
cached tokens of the next request from its index; vLLM's own counters
(`vllm:prefix_cache_queries_total` / `vllm:prefix_cache_hits_total`) say what really happened.
The sequence shares prefixes and, with 8 blocks, evicts them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from vllm_fleet import HOST, VllmFleet, VllmInstance, free_port, metric_sum, scrape, unique_prompt

from sage_cp_plugin import ControlPlaneManager, RequestMetadata
from sage_cp_plugin.kvevents.index import prompt_block_hashes
from sage_cp_plugin.policies.base import make_item
from sage_cp_plugin.types import ExecutionInstance

pytestmark = pytest.mark.e2e

BLOCK = 128  # vLLM's prefix-cache block size on CPU


class EventsInstance:
    def __init__(self, inst: VllmInstance, pub: str, replay: str, tokenizer: Path) -> None:
        self.inst, self.pub, self.replay, self.tokenizer = inst, pub, replay, tokenizer


@pytest.fixture(scope="module")
def vllm_events(vllm_fleet: VllmFleet) -> Iterator[EventsInstance]:
    # vLLM binds the PUB socket only for wildcard/ipc addresses (it *connects* to a plain
    # tcp://host:port): ipc keeps it off the network; the replay ROUTER always binds.
    pub = f"ipc://{vllm_fleet.log_dir}/kv-events-{free_port()}.sock"
    replay = f"tcp://{HOST}:{free_port()}"
    cfg = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": pub,
        "replay_endpoint": replay,
        "topic": "kv",
    }
    inst = vllm_fleet.start(
        "general",
        "general-kv-events",
        kv_pressure=True,
        extra_args=["--kv-events-config", json.dumps(cfg)],
    )
    try:
        yield EventsInstance(inst, pub, replay, vllm_fleet.models.tiny_llama)
    finally:
        vllm_fleet.stop(inst.name)


def _counters(url: str) -> tuple[float, float]:
    text = scrape(url)
    return (
        metric_sum(text, "vllm:prefix_cache_queries_total"),
        metric_sum(text, "vllm:prefix_cache_hits_total"),
    )


async def test_index_matches_vllm_prefix_cache_hits(
    vllm_events: EventsInstance, tiny_model_name: str
) -> None:
    inst = vllm_events.inst
    manager = ControlPlaneManager(
        scheduling_policy="fifo", routing_strategy="prefix_aware", enable_pd_separation=False
    )
    manager.register_instance(
        ExecutionInstance(
            instance_id="v0",
            host=HOST,
            port=inst.port,
            model_name=tiny_model_name,
            kv_events_endpoint=vllm_events.pub,
            kv_events_replay_endpoint=vllm_events.replay,
            kv_events_topic="kv",
            tokenizer=str(vllm_events.tokenizer),
        )
    )
    await manager.start()
    tracker = manager.kv_events
    state = manager.fleet.states["v0"]
    view = manager.kv_events.view
    assert view is not None

    def item_of(prompt: str, seq: int):  # type: ignore[no-untyped-def]
        item = make_item(RequestMetadata(prompt=prompt, max_tokens=8), now=0.0, seq=seq)
        tracker.tokenize(item, [state])
        assert item.prompt_token_ids is not None
        return item

    async def settled(prompt_ids: list[int], timeout: float = 20) -> None:
        """Wait until the index holds every full block of the prompt just served."""
        want = prompt_block_hashes(prompt_ids, BLOCK)

        def held() -> bool:
            return tracker.index.match(want, ["v0"])["v0"] == len(want)

        await tracker.wait_for(held, timeout)

    shared = unique_prompt(280)
    prompts = [
        shared + " " + unique_prompt(90, seed=1),  # new: no hit
        shared + " " + unique_prompt(90, seed=1),  # repeat: its full blocks hit
        shared + " " + unique_prompt(60, seed=2),  # shares the head
        unique_prompt(420),  # 4 blocks with the output: evicts
        unique_prompt(420),  # evicts more
        shared + " " + unique_prompt(90, seed=1),  # what is left of it
        unique_prompt(300),
        shared + " " + unique_prompt(60, seed=2),
    ]
    rows = []
    try:
        async with httpx.AsyncClient(base_url=inst.url, timeout=120) as client:
            # Warm-up until the subscription is live: ZeroMQ drops what a PUB sends before the
            # subscription reaches it; the next batch then shows a gap, closed by a replay.
            for attempt in range(3):
                warm = unique_prompt(200)
                r = await client.post("/v1/completions",
                                      json={"model": tiny_model_name, "prompt": warm, "max_tokens": 2})  # fmt: skip
                r.raise_for_status()
                try:
                    await settled(item_of(warm, -1 - attempt).prompt_token_ids or [], 5)
                    break
                except TimeoutError:
                    continue
            assert tracker.mode("v0") == "events"
            for i, prompt in enumerate(prompts):
                item = item_of(prompt, i)
                (predicted,) = view.cached_tokens(item, [state])
                q0, h0 = await asyncio.to_thread(_counters, inst.url)
                r = await client.post("/v1/completions",
                                      json={"model": tiny_model_name, "prompt": prompt, "max_tokens": 8})  # fmt: skip
                r.raise_for_status()
                q1, h1 = await asyncio.to_thread(_counters, inst.url)
                ids = item.prompt_token_ids or []
                rows.append((i, len(ids), q1 - q0, predicted, h1 - h0))
                await settled(ids)
    finally:
        status = tracker.status("v0")
        await manager.stop()
    print("request, our tokens, vLLM queried, index predicted hits, vLLM hits:", rows)
    print("index status:", status)
    # Our local tokenization is vLLM's: the queried token counts agree.
    assert all(n == q for _, n, q, _, _ in rows), rows
    # The index predicted every request's prefix-cache hits exactly.
    assert all(p == h for *_, p, h in rows), rows
    assert any(h > 0 for *_, h in rows[3:]), rows  # hits after evictions began
    # Request 5 repeats request 0 after two long prompts went through 8 blocks: vLLM evicted
    # part of it, and the index knew (an index of what was sent where would predict 384).
    assert rows[5][4] < rows[1][4], rows
    assert tracker.index.stats.removed > 0  # vLLM evicted, and the index saw it
