"""Streaming pass-through, embeddings, multi-model routing (issue: execution)."""

from __future__ import annotations

import httpx
import pytest

from sage_cp_plugin import RequestMetadata
from sage_cp_plugin.errors import ModelNotServedError
from sage_cp_plugin.sim import SimInstanceConfig
from tests.helpers import wait_until
from tests.simfleet import gen, managed_fleet


async def test_stream_relays_chunks_while_the_instance_still_generates() -> None:
    async with managed_fleet(gen(1, time_scale=1.0)) as (m, fleet):
        engine = fleet[0].sim.engine
        seen_running_at_first_chunk = None
        chunks = []
        async for chunk in m.stream("tell me a story", max_tokens=40):
            if seen_running_at_first_chunk is None and chunk.get("choices"):
                # Not buffered: the instance is still generating when the first text arrives.
                seen_running_at_first_chunk = engine.state()["running"]
            chunks.append(chunk)
        assert seen_running_at_first_chunk == 1
        texts = [c["choices"][0]["text"] for c in chunks if c.get("choices")]
        assert len(texts) == 40
        usage = [c["usage"] for c in chunks if c.get("usage")]
        assert usage and usage[-1]["completion_tokens"] == 40
        assert m.get_metrics().avg_ttft_ms < m.get_metrics().avg_latency_ms


async def test_ttft_and_inter_token_latency_are_measured_from_chunks() -> None:
    async with managed_fleet(gen(1, time_scale=0.5)) as (m, _):
        res = await m.generate("measure me", max_tokens=20)
        t = res.timings
        assert t.ttft_ms is not None and t.tpot_ms is not None and t.e2e_ms is not None
        # TPOT follows the definition (E2E - TTFT) / (output - 1).
        assert t.tpot_ms == pytest.approx((t.e2e_ms - t.ttft_ms) / 19)
        assert 0 < t.ttft_ms < t.e2e_ms


async def test_caller_that_stops_reading_cancels_upstream() -> None:
    async with managed_fleet(gen(1, time_scale=1.0)) as (m, fleet):
        engine = fleet[0].sim.engine
        rid = None
        agen = m.stream("long answer please", max_tokens=2000)
        async for chunk in agen:
            rid = chunk.get("id")
            break
        await agen.aclose()
        await wait_until(lambda: engine.state()["running"] == 0, "the upstream abort")
        assert engine.state()["counters"]["aborted"] == 1
        assert rid is not None
        assert m.get_metrics().completed_requests == 0


async def test_embeddings_split_across_instances_and_reassembled_in_order() -> None:
    configs = [
        SimInstanceConfig(served_model_names=["emb"], role="embedding", time_scale=0.01, seed=i)
        for i in range(2)
    ]
    async with managed_fleet(configs, routing_strategy="round_robin") as (m, fleet):
        texts = [f"sentence number {i} about topic {i % 3}" for i in range(10)]
        out = await m.embed(texts, model_name="emb", batch_size=3)
        assert [d["index"] for d in out["data"]] == list(range(10))
        assert len(out["parts"]) == 4
        assert {p["instance_id"] for p in out["parts"]} == {"sim-0", "sim-1"}
        async with httpx.AsyncClient() as client:
            direct = (
                await client.post(
                    f"{fleet[0].url}/v1/embeddings", json={"model": "emb", "input": texts}
                )
            ).json()
        assert [d["embedding"] for d in out["data"]] == [d["embedding"] for d in direct["data"]]
        assert out["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
        with pytest.raises(ValueError, match="at least one"):
            await m.embed([], model_name="emb")


async def test_multi_model_routing_and_listing() -> None:
    configs = [
        SimInstanceConfig(served_model_names=["llama"], time_scale=0.01, seed=0),
        SimInstanceConfig(served_model_names=["qwen", "qwen-alias"], time_scale=0.01, seed=1),
        SimInstanceConfig(served_model_names=["emb"], role="embedding", time_scale=0.01, seed=2),
    ]
    async with managed_fleet(configs) as (m, _):
        assert m.list_models() == ["emb", "llama", "qwen", "qwen-alias"]
        a = await m.generate("hi", model_name="llama", max_tokens=2)
        b = await m.generate("hi", model_name="qwen-alias", max_tokens=2)
        e = await m.generate(input="hi", model_name="emb")
        assert (a.instance_id, b.instance_id, e.instance_id) == ("sim-0", "sim-1", "sim-2")
        assert b.response is not None and b.response["model"] == "qwen-alias"
        with pytest.raises(ModelNotServedError, match=r"'mistral'.*emb, llama, qwen"):
            await m.generate("hi", model_name="mistral")
        # An embedding model asked for generation is not "served" for that purpose.
        with pytest.raises(ModelNotServedError):
            await m.generate("hi", model_name="emb")
        r = await m.submit_request(RequestMetadata(prompt="x", max_tokens=2))
        assert (await m.wait(r, timeout=10)).instance_id in {"sim-0", "sim-1"}
