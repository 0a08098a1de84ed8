"""The simulator's OpenAI-compatible HTTP surface, in-process through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sage_cp_plugin.sim import SimInstance, SimInstanceConfig, create_app, instance_of


@contextlib.asynccontextmanager
async def client(**cfg: Any) -> AsyncIterator[tuple[httpx.AsyncClient, SimInstance]]:
    cfg.setdefault("time_scale", 0)
    app = create_app(SimInstanceConfig(**cfg))
    sim = instance_of(app)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
            yield c, sim
    finally:
        await sim.aclose()


def sse_events(body: str) -> list[str]:
    assert body.endswith("\n\n")
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


def metric_samples(text: str) -> dict[str, float]:
    """``name{label=...}`` -> value, label sets collapsed (one engine per instance)."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name
            if "source" in s.labels:
                key += f"[{s.labels['source']}]"
            out[key] = s.value
    return out


async def test_completion_format_and_usage() -> None:
    async with client() as (c, _):
        r = await c.post(
            "/v1/completions",
            json={"model": "sim-model", "prompt": "one two three", "max_tokens": 5},
        )
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "text_completion" and body["model"] == "sim-model"
        choice = body["choices"][0]
        assert len(choice["text"].split()) == 5 and choice["finish_reason"] == "length"
        assert body["usage"] == {
            "prompt_tokens": 3,
            "total_tokens": 8,
            "completion_tokens": 5,
            "prompt_tokens_details": None,
        }
        again = await c.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 5})
        assert again.json()["choices"][0]["text"] == choice["text"]  # deterministic
        dflt = await c.post("/v1/completions", json={"prompt": "x"})
        assert dflt.json()["usage"]["completion_tokens"] == 16  # default_max_tokens


async def test_chat_completion_and_streaming_match() -> None:
    async with client() as (c, _):
        req = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
        plain = (await c.post("/v1/chat/completions", json=req)).json()
        assert plain["object"] == "chat.completion"
        assert plain["choices"][0]["message"]["role"] == "assistant"
        assert plain["usage"]["prompt_tokens"] == 4  # <|user|> hello there <|assistant|>
        r = await c.post("/v1/chat/completions", json={**req, "stream": True})
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
        assert text == plain["choices"][0]["message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert all("usage" not in ch for ch in chunks)


async def test_stream_include_usage_adds_a_final_usage_chunk() -> None:
    async with client() as (c, _):
        r = await c.post(
            "/v1/completions",
            json={
                "prompt": "a b",
                "max_tokens": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        events = sse_events(r.text)
        chunks = [json.loads(e) for e in events[:-1]]
        assert [ch["choices"][0]["text"] for ch in chunks[:3]][1].startswith(" ")
        last = chunks[-1]
        assert last["choices"] == [] and last["object"] == "text_completion"
        assert last["usage"]["completion_tokens"] == 3 and last["usage"]["prompt_tokens"] == 2


async def test_embeddings_deterministic_unit_vectors_in_input_order() -> None:
    async with client(role="embedding", served_model_names=["sim-embed"]) as (c, _):
        r = await c.post(
            "/v1/embeddings", json={"model": "sim-embed", "input": ["a b", "c", "a b"]}
        )
        body = r.json()
        assert body["object"] == "list" and body["usage"]["prompt_tokens"] == 5
        vecs = [np.array(d["embedding"]) for d in body["data"]]
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(v.shape == (384,) for v in vecs)
        assert all(abs(np.linalg.norm(v) - 1) < 1e-9 for v in vecs)
        assert np.allclose(vecs[0], vecs[2]) and not np.allclose(vecs[0], vecs[1])
        single = (await c.post("/v1/embeddings", json={"input": "c"})).json()
        assert np.allclose(single["data"][0]["embedding"], vecs[1])
        b64 = await c.post("/v1/embeddings", json={"input": "c", "encoding_format": "base64"})
        raw = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), np.float32)
        assert np.allclose(raw, vecs[1], atol=1e-6)


async def test_roles_reject_the_other_kind_of_request() -> None:
    async with client(role="embedding", served_model_names=["sim-embed"]) as (c, _):
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 400 and "does not support" in r.json()["error"]["message"]
    async with client() as (c, _):
        r = await c.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 400 and "Embeddings API" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "Invalid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "max_tokens": -5}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": 7}).encode(), 400, "prompt"),
        (json.dumps({"max_tokens": 3}).encode(), 400, "prompt"),
        (
            json.dumps({"model": "gpt-9", "prompt": "x"}).encode(),
            404,
            "The model `gpt-9` does not exist.",
        ),
    ],
)
async def test_bad_input_gets_openai_errors(body: bytes, status: int, needle: str) -> None:
    async with client() as (c, _):
        r = await c.post("/v1/completions", content=body)
        assert r.status_code == status
        err = r.json()["error"]
        assert needle in err["message"] and err["code"] == status
        assert set(err) == {"message", "type", "param", "code"}


async def test_too_long_prompt_is_a_400() -> None:
    async with client(max_model_len=8) as (c, _):
        r = await c.post("/v1/completions", json={"prompt": "a b c d e", "max_tokens": 4})
        assert (
            r.status_code == 400 and "maximum context length is 8" in r.json()["error"]["message"]
        )


async def test_models_health_tokenize() -> None:
    async with client(served_model_names=["m1", "m2"]) as (c, _):
        assert (await c.get("/health")).status_code == 200
        models = (await c.get("/v1/models")).json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["m1", "m2"]
        t = (await c.post("/tokenize", json={"model": "m2", "prompt": "a b a"})).json()
        assert t["count"] == 3 and t["tokens"][0] == t["tokens"][2]


async def test_metrics_have_vllm_names_and_prefix_hits_rise() -> None:
    async with client() as (c, _):
        prompt = " ".join(f"w{i}" for i in range(300))
        for _ in range(2):
            assert (
                await c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 3})
            ).is_success
        r = await c.get("/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(r.text)}
        for name in [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_queries",
            "vllm:prefix_cache_hits",
            "vllm:num_preemptions",
            "vllm:prompt_tokens",
            "vllm:generation_tokens",
            "vllm:time_to_first_token_seconds",
            "vllm:inter_token_latency_seconds",
            "vllm:e2e_request_latency_seconds",
            "vllm:request_queue_time_seconds",
        ]:
            assert name in fams, name
        labels = fams["vllm:num_requests_running"].samples[0].labels
        assert labels == {"engine": "0", "model_name": "sim-model"}
        m = metric_samples(r.text)
        assert m["vllm:prefix_cache_hits_total"] == 288  # 18 of 300/16 blocks, second time
        assert m["vllm:prefix_cache_queries_total"] == 600
        assert m["vllm:prompt_tokens_total"] == 600 and m["vllm:generation_tokens_total"] == 6
        assert m["vllm:e2e_request_latency_seconds_count"] == 2
        assert "vllm:nixl_xfer_time_seconds" not in fams  # only on decode instances


async def test_pd_prefill_then_decode_skips_prefill_on_decode() -> None:
    prompt = " ".join(f"pd{i}" for i in range(200))
    async with client(role="prefill") as (pc, psim), client(role="decode") as (dc, _dsim):
        step1 = {
            "prompt": prompt,
            "max_tokens": 1,
            "stream": False,
            "kv_transfer_params": {
                "do_remote_decode": True,
                "do_remote_prefill": False,
                "remote_engine_id": None,
                "remote_block_ids": None,
                "remote_host": None,
                "remote_port": None,
            },
        }
        r1 = (await pc.post("/v1/completions", json=step1)).json()
        params = r1["kv_transfer_params"]
        assert r1["usage"]["completion_tokens"] == 1
        assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
        assert params["remote_engine_id"] == psim.engine.engine_id
        assert params["remote_num_tokens"] == 200 and len(params["remote_block_ids"]) == 13
        assert {"remote_host", "remote_port", "remote_request_id", "tp_size"} <= set(params)
        assert psim.engine.state()["pinned"] == 1
        r2 = await dc.post(
            "/v1/completions",
            json={"prompt": prompt, "max_tokens": 6, "stream": True, "kv_transfer_params": params},
        )
        assert sse_events(r2.text)[-1] == "[DONE]"
        m = metric_samples((await dc.get("/metrics")).text)
        assert m["vllm:nixl_xfer_time_seconds_count"] == 1
        assert m["vllm:prompt_tokens_by_source_total[external_kv_transfer]"] == 200
        assert m["vllm:prompt_tokens_by_source_total[local_compute]"] == 0
        assert m["vllm:external_prefix_cache_hits_total"] == 200
        assert psim.engine.state()["pinned"] == 0  # the decode side fetched it
        # Parameters for another prompt are useless: the decode computes the prefill itself.
        other = " ".join(f"zz{i}" for i in range(50))
        r3 = await dc.post(
            "/v1/completions", json={"prompt": other, "max_tokens": 2, "kv_transfer_params": params}
        )
        assert r3.status_code == 200
        m = metric_samples((await dc.get("/metrics")).text)
        assert m["vllm:nixl_xfer_time_seconds_count"] == 1
        assert m["vllm:prompt_tokens_by_source_total[local_compute]"] == 50


async def test_kv_transfer_params_null_is_accepted_everywhere() -> None:
    for role in ("general", "prefill", "decode"):
        async with client(role=role) as (c, _):
            r = await c.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "q"}], "kv_transfer_params": None},
            )
            assert r.status_code == 200 and r.json()["kv_transfer_params"] is None


async def test_fault_error_rate_and_rate_limit() -> None:
    async with client() as (c, _):
        r = await c.post("/sim/faults", json={"error_rate": 1.0})
        assert r.json()["error_rate"] == 1.0
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 500 and r.json()["error"]["code"] == 500
        await c.post("/sim/faults", json={"rate_limit_rate": 1.0, "retry_after_s": 3})
        r = await c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]}
        )
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        await c.post("/sim/faults", json={})
        assert (await c.post("/v1/completions", json={"prompt": "x"})).status_code == 200
        bad = await c.post("/sim/faults", json={"error_rate": 2})
        assert bad.status_code == 400 and "error_rate" in bad.json()["error"]["message"]


async def test_fault_error_rate_is_a_fraction() -> None:
    async with client() as (c, _):
        await c.post("/sim/faults", json={"error_rate": 0.5})
        codes = [
            (await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})).status_code
            for _ in range(60)
        ]
        assert 10 < codes.count(500) < 50 and codes.count(200) == 60 - codes.count(500)


async def test_fault_malformed_json_truncated_sse_metrics_health() -> None:
    async with client() as (c, _):
        await c.post("/sim/faults", json={"malformed_json": True})
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            r.json()
        await c.post("/sim/faults", json={"truncated_sse": True})
        r = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 8, "stream": True})
        assert "[DONE]" not in r.text and not r.text.endswith("\n\n")
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text.split("data: ")[-1])
        await c.post("/sim/faults", json={"metrics_garbage": True, "health_status": 503})
        assert (await c.get("/health")).status_code == 503
        with pytest.raises(ValueError):
            list(text_string_to_metric_families((await c.get("/metrics")).text))


async def test_fault_slow_and_hang() -> None:
    async with client() as (c, sim):
        loop = asyncio.get_running_loop()
        await c.post("/sim/faults", json={"slow_ms": 50})
        t0 = loop.time()
        assert (await c.post("/v1/completions", json={"prompt": "x"})).status_code == 200
        assert loop.time() - t0 >= 0.05
        await c.post("/sim/faults", json={"hang": True})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.post("/v1/completions", json={"prompt": "x"}), 0.2)
        assert sim.engine.state()["running"] == 0  # the hang happens before the engine
        assert (await c.get("/health")).status_code == 200


async def test_sim_state_reports_engine_counters() -> None:
    async with client() as (c, _):
        await c.post("/v1/completions", json={"prompt": "a b c", "max_tokens": 2})
        s = (await c.get("/sim/state")).json()
        assert s["running"] == 0 and s["kv_blocks_used"] == 0
        assert s["counters"]["generation_tokens"] == 2 and s["counters"]["finished"] == 1
