"""Pin the facts about real vLLM (0.32, CPU) that the control plane relies on.

Direct httpx calls, no control plane involved: when a vLLM upgrade changes an endpoint, a
response shape, a metric name or prefix-caching behaviour, this module fails and names the fact,
before the control-plane e2e tests fail in a confusing way. docs/architecture.md §6 lists the facts.
The disaggregated-prefill facts are in ``test_vllm_pd_facts.py`` (its NIXL pair is started only
for that module).
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from vllm_fleet import VllmFleet, VllmInstance, iter_metric, metric_sum, scrape, unique_prompt

pytestmark = pytest.mark.e2e

TIMEOUT = httpx.Timeout(120.0, connect=5.0)

GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
)


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}{path}", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, f"POST {path} -> {r.status_code}: {r.text[:500]}"
    data: dict[str, Any] = r.json()
    return data


def sse_events(url: str, path: str, body: dict[str, Any]) -> list[str]:
    """The ``data:`` payloads of an SSE answer, in order (``[DONE]`` included)."""
    events: list[str] = []
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()[:500]
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(line[len("data:") :].strip())
            else:
                assert line == "", f"unexpected SSE line {line!r}"
    return events


# -- generation --------------------------------------------------------------------------------
def test_health_models_and_tokenize(vllm_general_urls: list[str], tiny_model_name: str) -> None:
    for url in vllm_general_urls:
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
        models = httpx.get(f"{url}/v1/models", timeout=TIMEOUT).json()
        assert [m["id"] for m in models["data"]] == [tiny_model_name]
        assert models["data"][0]["max_model_len"] == 512
        tok = post(url, "/tokenize", {"model": tiny_model_name, "prompt": unique_prompt(50)})
        assert tok["count"] == len(tok["tokens"]) > 50


def test_completion(vllm_general_urls: list[str], tiny_model_name: str) -> None:
    body = {
        "model": tiny_model_name,
        "prompt": "The quick brown fox",
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,  # random weights may emit </s> at once; we want exactly 8 tokens
    }
    out = post(vllm_general_urls[0], "/v1/completions", body)
    assert out["object"] == "text_completion"
    assert out["model"] == tiny_model_name
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    assert isinstance(choice["text"], str) and choice["text"]
    assert out["usage"]["completion_tokens"] == 8
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 8
    # A normal response carries kv_transfer_params: null (routers must accept the key).
    assert out.get("kv_transfer_params") is None
    # Greedy decoding of the same prompt is deterministic, on the same and on another instance
    # (same seed-built weights): retries and failover may compare answers.
    again = post(vllm_general_urls[0], "/v1/completions", body)
    other = post(vllm_general_urls[1], "/v1/completions", body)
    assert again["choices"][0]["text"] == choice["text"] == other["choices"][0]["text"]


def test_chat_completion(vllm_general_urls: list[str], tiny_model_name: str) -> None:
    out = post(
        vllm_general_urls[1],
        "/v1/chat/completions",
        {
            "model": tiny_model_name,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."},
            ],
            "max_tokens": 6,
            "ignore_eos": True,
        },
    )
    assert out["object"] == "chat.completion"
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert out["usage"]["completion_tokens"] == 6


def test_completion_stream_with_usage(vllm_general_urls: list[str], tiny_model_name: str) -> None:
    events = sse_events(
        vllm_general_urls[0],
        "/v1/completions",
        {
            "model": tiny_model_name,
            "prompt": unique_prompt(20),
            "max_tokens": 32,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1, "all chunks of one stream share an id"
    token_chunks = [c for c in chunks if c["choices"]]
    # Incremental, not one buffered blob. Usually one chunk per token, but a busy API server
    # coalesces tokens that piled up into one chunk (seen here: 10 chunks for 12 tokens under
    # load), so relays must not count chunks as tokens: usage is the token count.
    assert 2 <= len(token_chunks) <= 32
    assert [c["choices"][0]["finish_reason"] for c in token_chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in token_chunks[:-1])
    # include_usage: a final chunk with empty choices and the usage, right before [DONE].
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 32
    assert usage_chunk["usage"]["prompt_tokens"] > 20
    assert all(c.get("usage") is None for c in token_chunks)


def test_chat_stream_with_usage(vllm_general_urls: list[str], tiny_model_name: str) -> None:
    events = sse_events(
        vllm_general_urls[1],
        "/v1/chat/completions",
        {
            "model": tiny_model_name,
            "messages": [{"role": "user", "content": unique_prompt(10)}],
            "max_tokens": 5,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_stream_without_usage_option_has_no_usage(
    vllm_general_urls: list[str], tiny_model_name: str
) -> None:
    # The control plane must ask for include_usage itself: vLLM does not send usage otherwise.
    events = sse_events(
        vllm_general_urls[0],
        "/v1/completions",
        {"model": tiny_model_name, "prompt": "hello", "max_tokens": 3, "stream": True},
    )
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(not c.get("usage") for c in chunks)


def test_errors_are_4xx_json(vllm_general_urls: list[str], tiny_model_name: str) -> None:
    """Client errors come back as 4xx with an OpenAI error object (never worth a retry)."""
    url = vllm_general_urls[0]
    unknown = httpx.post(
        f"{url}/v1/completions",
        json={"model": "no-such-model", "prompt": "x", "max_tokens": 1},
        timeout=TIMEOUT,
    )
    assert unknown.status_code == 404, unknown.text
    assert "error" in unknown.json()
    too_long = httpx.post(
        f"{url}/v1/completions",
        json={"model": tiny_model_name, "prompt": unique_prompt(600), "max_tokens": 1},
        timeout=TIMEOUT,
    )
    assert too_long.status_code == 400, too_long.text
    assert "error" in too_long.json()
    # The server is still healthy afterwards.
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200


def test_eight_concurrent_requests_all_complete(
    vllm_general_urls: list[str], tiny_model_name: str
) -> None:
    def one(i: int) -> dict[str, Any]:
        return post(
            vllm_general_urls[i % 2],
            "/v1/completions",
            {
                "model": tiny_model_name,
                "prompt": unique_prompt(30),
                "max_tokens": 8,
                "ignore_eos": True,
            },
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    assert [r["usage"]["completion_tokens"] for r in results] == [8] * 8
    assert len({r["id"] for r in results}) == 8


# -- embeddings --------------------------------------------------------------------------------
def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


REFERENCE_EMBED = r"""
import json, sys
import torch
from transformers import AutoModel, AutoTokenizer
path, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path).eval()
batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
mean = (hidden * mask).sum(1) / mask.sum(1)  # sentence-transformers mean pooling
print(json.dumps(torch.nn.functional.normalize(mean, dim=-1).tolist()))
"""


def test_embeddings_all_minilm(
    vllm_embed_url: str, embed_model_name: str, vllm_fleet: VllmFleet
) -> None:
    texts = [
        "A cat sits on the mat.",
        "A kitten is lying on the rug.",
        "The stock market fell sharply today.",
    ]
    out = post(vllm_embed_url, "/v1/embeddings", {"model": embed_model_name, "input": texts})
    assert out["object"] == "list" and out["model"] == embed_model_name
    assert [d["index"] for d in out["data"]] == [0, 1, 2], "data come back in input order"
    vecs = [d["embedding"] for d in out["data"]]
    assert all(len(v) == 384 for v in vecs), "all-MiniLM-L6-v2 has 384 dimensions"
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3 for v in vecs), "normalized"
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] == 0
    # Real semantics, so the model really is MiniLM and not random weights.
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]) + 0.2
    # A single string input gives the same vector as in the batch (splitting a batch across
    # instances, as the control plane does, must not change results).
    single = post(vllm_embed_url, "/v1/embeddings", {"model": embed_model_name, "input": texts[2]})
    assert cosine(single["data"][0]["embedding"], vecs[2]) > 0.9999
    # Equal to sentence-transformers' recipe run with plain transformers on the same files.
    ref = subprocess.run(
        [
            str(vllm_fleet.python),
            "-c",
            REFERENCE_EMBED,
            str(vllm_fleet.models.minilm),
            json.dumps(texts),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    expected = json.loads(ref.stdout.strip().splitlines()[-1])
    for got, want in zip(vecs, expected, strict=True):
        assert cosine(got, want) > 0.999


# -- metrics -----------------------------------------------------------------------------------
def test_metric_names(vllm_general: list[VllmInstance], tiny_model_name: str) -> None:
    url = vllm_general[0].url
    # Make sure every histogram has observations (a served request) before reading.
    post(url, "/v1/completions", {"model": tiny_model_name, "prompt": "hi", "max_tokens": 2})
    text = scrape(url)
    for name in (*GAUGES, *COUNTERS):
        samples = list(iter_metric(text, name))
        assert samples, f"metric {name} missing from /metrics"
        labels = samples[0][0]
        assert labels.get("model_name") == tiny_model_name, labels
        assert "engine" in labels, labels
    for name in HISTOGRAMS:
        for suffix in ("_bucket", "_sum", "_count"):
            assert list(iter_metric(text, name + suffix)), f"{name}{suffix} missing"
        assert metric_sum(text, name + "_count") >= 1
    assert "# TYPE vllm:prefix_cache_hits_total counter" in text
    assert "# TYPE vllm:kv_cache_usage_perc gauge" in text
    assert metric_sum(text, "vllm:prompt_tokens_total") > 0
    assert metric_sum(text, "vllm:generation_tokens_total") > 0
    # The pre-0.10 names are gone in 0.32 (routers reading only them break); record the fact.
    assert "vllm:gpu_cache_usage_perc{" not in text
    assert "vllm:time_per_output_token_seconds_bucket{" not in text


def test_prefix_cache_hits_rise_for_repeated_long_prompt(
    vllm_general_urls: list[str], tiny_model_name: str
) -> None:
    """A repeated prompt > 128 tokens hits the cache on the instance that saw it, only there."""
    first, other = vllm_general_urls
    prompt = unique_prompt(300)
    n_tokens = post(first, "/tokenize", {"model": tiny_model_name, "prompt": prompt})["count"]
    assert n_tokens > 256
    before = {u: scrape(u) for u in vllm_general_urls}
    body = {"model": tiny_model_name, "prompt": prompt, "max_tokens": 2}
    post(first, "/v1/completions", body)
    mid = scrape(first)
    post(first, "/v1/completions", body)
    after = {u: scrape(u) for u in vllm_general_urls}

    def delta(name: str, a: str, b: str) -> float:
        return metric_sum(b, name) - metric_sum(a, name)

    hits = "vllm:prefix_cache_hits_total"
    queries = "vllm:prefix_cache_queries_total"
    # Counters count tokens. First time: queried, no hit (the prompt is new).
    assert delta(queries, before[first], mid) == n_tokens
    assert delta(hits, before[first], mid) == 0
    # Second time: every full 128-token block hits (CPU block size is 128).
    assert delta(hits, mid, after[first]) == (n_tokens // 128) * 128
    # The other instance never saw it: prefix affinity must route repeats to the same one.
    assert delta(hits, before[other], after[other]) == 0
    assert delta(queries, before[other], after[other]) == 0


def test_kv_pressure_is_visible_in_metrics(vllm_pressure_url: str, tiny_model_name: str) -> None:
    """8 KV blocks of 128 tokens (7 usable): 8 requests of 4 blocks each queue up.

    Each request grows to ~400 tokens (4 blocks), so at most one or two fit at once and the
    rest wait; every request still completes. /metrics is served by the same busy process, so
    the requests are made long enough (100 tokens each) for the poller to see the queue.
    """
    seen = {"waiting": 0.0, "usage": 0.0, "running": 0.0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            text = scrape(vllm_pressure_url)
            seen["waiting"] = max(seen["waiting"], metric_sum(text, "vllm:num_requests_waiting"))
            seen["running"] = max(seen["running"], metric_sum(text, "vllm:num_requests_running"))
            seen["usage"] = max(seen["usage"], metric_sum(text, "vllm:kv_cache_usage_perc"))
            done.wait(0.1)  # a sampling interval that ends as soon as the load does

    def one(_: int) -> dict[str, Any]:
        return post(
            vllm_pressure_url,
            "/v1/completions",
            {
                "model": tiny_model_name,
                "prompt": unique_prompt(290),
                "max_tokens": 100,
                "ignore_eos": True,
            },
        )

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, range(8)))
    finally:
        done.set()
        poller.join(timeout=30)
    # Behaviour under pressure: everything still completes, nothing is dropped...
    assert [r["usage"]["completion_tokens"] for r in results] == [100] * 8
    # ...and the gauges a kv_aware router reads show the pressure.
    assert seen["waiting"] >= 1, seen
    assert seen["usage"] >= 0.5, seen  # a fraction in [0, 1] despite the name "perc"
    assert 1 <= seen["running"] <= 3, seen  # 7 usable blocks hold at most two such requests
    final = scrape(vllm_pressure_url)
    assert metric_sum(final, "vllm:num_requests_running") == 0
    assert metric_sum(final, "vllm:num_requests_waiting") == 0


# -- failover facts (kill / restart) -----------------------------------------------------------
def test_killed_instance_breaks_stream_refuses_then_restarts_fresh(
    vllm_fleet: VllmFleet, vllm_pressure: VllmInstance, tiny_model_name: str
) -> None:
    """What failover handling sees from a crashed vLLM, and what a restart looks like.

    Uses the KV-pressure instance (no other test of this module needs it afterwards, and it is
    restarted before returning). Pins: a stream cut by a crash ends without ``[DONE]`` and with
    a transport error; a dead instance refuses connections at once; the restarted instance has
    the same URL, is healthy, and its counters start again from zero (scrapers must treat a
    counter going down as a restart, not as a negative rate).
    """
    url = vllm_pressure.url
    post(url, "/v1/completions", {"model": tiny_model_name, "prompt": "warm", "max_tokens": 2})
    assert metric_sum(scrape(url), "vllm:prompt_tokens_total") > 0

    body = {
        "model": tiny_model_name,
        "prompt": unique_prompt(20),
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    got: list[str] = []
    with (
        pytest.raises(httpx.TransportError),
        httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=TIMEOUT) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data:"):
                got.append(line)
                if len(got) == 3:
                    vllm_fleet.kill(vllm_pressure.name)  # SIGKILL mid-stream
    assert 3 <= len(got) < 400 and "data: [DONE]" not in got

    assert not vllm_pressure.alive()
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=TIMEOUT)
    assert time.monotonic() - started < 2, "a dead instance must refuse, not hang"

    vllm_fleet.restart(vllm_pressure.name)
    assert vllm_pressure.url == url
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
    assert metric_sum(scrape(url), "vllm:prompt_tokens_total") == 0
    out = post(url, "/v1/completions", {"model": tiny_model_name, "prompt": "x", "max_tokens": 2})
    assert out["usage"]["completion_tokens"] == 2
