"""Pin vLLM's disaggregated-prefill protocol with NixlConnector (docs/architecture.md §6), raw httpx.

Step 1 goes to the prefill instance (kv_producer) with ``max_tokens: 1`` and
``kv_transfer_params.do_remote_decode``; step 2 sends the original request plus the returned
``kv_transfer_params`` to the decode instance (kv_consumer), which pulls the KV over NIXL.
Proof that the KV arrived by transfer comes from the decode instance's /metrics.

The pair is module-scoped (``vllm_pd_pair``): NIXL busy-spins a core per idle instance, so it
lives only while this module runs. Decode is slow while the pair spins (seconds, not 0.13 s):
only behaviour is asserted.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from vllm_fleet import iter_metric, metric_sum, scrape, unique_prompt

from .conftest import PdPair

pytestmark = pytest.mark.e2e

TIMEOUT = httpx.Timeout(120.0, connect=5.0)

PREFILL_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
XFER_COUNT = "vllm:nixl_xfer_time_seconds_count"


def by_source(text: str, source: str) -> float:
    """``vllm:prompt_tokens_by_source_total{source=...}`` summed over engines."""
    return sum(
        v
        for labels, v in iter_metric(text, "vllm:prompt_tokens_by_source_total")
        if labels.get("source") == source
    )


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT)


def prefill_step(pair: PdPair, request: dict[str, Any]) -> dict[str, Any]:
    body = {**request, "max_tokens": 1, "stream": False, "kv_transfer_params": PREFILL_PARAMS}
    r = post(pair.prefill_url, body)
    assert r.status_code == 200, r.text[:500]
    data: dict[str, Any] = r.json()
    return data


def decode_step(pair: PdPair, request: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    r = post(pair.decode_url, {**request, "kv_transfer_params": params})
    assert r.status_code == 200, r.text[:500]
    data: dict[str, Any] = r.json()
    return data


def test_two_step_protocol_transfers_the_prompt_kv(
    vllm_pd_pair: PdPair, tiny_model_name: str
) -> None:
    request = {
        "model": tiny_model_name,
        "prompt": unique_prompt(220),  # > 128 tokens, unique: no prefix-cache help anywhere
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    before = scrape(vllm_pd_pair.decode_url)

    first = prefill_step(vllm_pd_pair, request)
    n_prompt = first["usage"]["prompt_tokens"]
    assert n_prompt > 128
    assert first["usage"]["completion_tokens"] == 1
    params = first["kv_transfer_params"]
    assert isinstance(params, dict), "a NixlConnector producer returns kv_transfer_params"
    # The fields the control plane passes on unchanged (it must not need to understand them).
    for key in (
        "do_remote_prefill",
        "do_remote_decode",
        "remote_block_ids",
        "remote_engine_id",
        "remote_request_id",
        "remote_host",
        "remote_port",
        "tp_size",
        "pp_size",
        "remote_num_tokens",
        "transfer_mode",
    ):
        assert key in params, f"kv_transfer_params lacks {key}: {params}"
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert params["remote_host"] == "127.0.0.1"
    assert params["remote_num_tokens"] == n_prompt
    assert params["remote_block_ids"], "prefill kept blocks for the decode side to pull"

    second = decode_step(vllm_pd_pair, request, params)
    after = scrape(vllm_pd_pair.decode_url)
    assert second["usage"]["prompt_tokens"] == n_prompt
    assert second["usage"]["completion_tokens"] == 8
    assert second["choices"][0]["finish_reason"] == "length"

    # Proof on the decode side: one NIXL transfer, the whole prompt arrived by transfer and
    # none of it was computed locally.
    assert metric_sum(after, XFER_COUNT) - metric_sum(before, XFER_COUNT) == 1
    transferred = by_source(after, "external_kv_transfer") - by_source(
        before, "external_kv_transfer"
    )
    computed = by_source(after, "local_compute") - by_source(before, "local_compute")
    ext_hits = metric_sum(after, "vllm:external_prefix_cache_hits_total") - metric_sum(
        before, "vllm:external_prefix_cache_hits_total"
    )
    assert transferred == n_prompt
    assert ext_hits == n_prompt
    assert computed == 0

    # Same answer as a plain local run of the same greedy request (the KV is the real one).
    local = post(vllm_pd_pair.prefill_url, request)
    assert local.status_code == 200, local.text[:500]
    assert local.json()["choices"][0]["text"] == second["choices"][0]["text"]


def test_concurrent_pd_requests_each_transfer_once(
    vllm_pd_pair: PdPair, tiny_model_name: str
) -> None:
    n = 4
    requests = [
        {
            "model": tiny_model_name,
            "prompt": unique_prompt(200),
            "max_tokens": 4,
            "ignore_eos": True,
        }
        for _ in range(n)
    ]
    before = scrape(vllm_pd_pair.decode_url)

    def one(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        first = prefill_step(vllm_pd_pair, request)
        out = decode_step(vllm_pd_pair, request, first["kv_transfer_params"])
        return first["usage"]["prompt_tokens"], out

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, requests))
    after = scrape(vllm_pd_pair.decode_url)
    assert all(out["usage"]["completion_tokens"] == 4 for _, out in results)
    assert metric_sum(after, XFER_COUNT) - metric_sum(before, XFER_COUNT) == n
    transferred = by_source(after, "external_kv_transfer") - by_source(
        before, "external_kv_transfer"
    )
    assert transferred == sum(n_prompt for n_prompt, _ in results)


def test_streamed_decode_step(vllm_pd_pair: PdPair, tiny_model_name: str) -> None:
    """Step 2 may stream: the control plane relays the decode instance's SSE answer."""
    request = {
        "model": tiny_model_name,
        "prompt": unique_prompt(200),
        "max_tokens": 5,
        "ignore_eos": True,
    }
    params = prefill_step(vllm_pd_pair, request)["kv_transfer_params"]
    before = scrape(vllm_pd_pair.decode_url)
    body = {
        **request,
        "stream": True,
        "stream_options": {"include_usage": True},
        "kv_transfer_params": params,
    }
    data: list[str] = []
    with httpx.stream(
        "POST", f"{vllm_pd_pair.decode_url}/v1/completions", json=body, timeout=TIMEOUT
    ) as r:
        assert r.status_code == 200
        data = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    assert '"completion_tokens":5' in data[-2].replace(" ", "")
    after = scrape(vllm_pd_pair.decode_url)
    assert metric_sum(after, XFER_COUNT) - metric_sum(before, XFER_COUNT) == 1


def test_unreachable_prefill_fails_fast_and_decode_survives(
    vllm_pd_pair: PdPair, tiny_model_name: str
) -> None:
    """A transfer from an unreachable prefill engine fails with a 5xx within seconds.

    The control plane's fallback (serve the whole request on one instance) relies on getting an
    error instead of a hang. Seen here: HTTP 500 after ~5 s per handshake attempt. The engine id
    must be new: NIXL caches the handshake per ``remote_engine_id``, so a wrong ``remote_port``
    alone is ignored once the real prefill engine has been reached.
    """
    request = {
        "model": tiny_model_name,
        "prompt": unique_prompt(200),
        "max_tokens": 2,
        "ignore_eos": True,
    }
    params = dict(prefill_step(vllm_pd_pair, request)["kv_transfer_params"])
    params["remote_engine_id"] = str(uuid.uuid4())  # an engine nobody has shaken hands with
    params["remote_port"] = 9  # discard port: nothing listens there
    before = scrape(vllm_pd_pair.decode_url)
    # An answer, not a hang: a hang ends in httpx.ReadTimeout (the client's 120 s read timeout)
    # and fails the test. ~5-10 s on a quiet machine.
    r = post(vllm_pd_pair.decode_url, {**request, "kv_transfer_params": params})
    assert r.status_code >= 500, r.text[:300]
    assert "error" in r.json()
    after = scrape(vllm_pd_pair.decode_url)
    failed = "vllm:nixl_num_failed_transfers_total"
    assert metric_sum(after, failed) > metric_sum(before, failed)
    # The decode instance stays healthy and the protocol works again right away.
    assert httpx.get(f"{vllm_pd_pair.decode_url}/health", timeout=TIMEOUT).status_code == 200
    good = {**request, "prompt": unique_prompt(200)}
    out = decode_step(vllm_pd_pair, good, prefill_step(vllm_pd_pair, good)["kv_transfer_params"])
    assert out["usage"]["completion_tokens"] == 2
    assert metric_sum(scrape(vllm_pd_pair.decode_url), XFER_COUNT) > metric_sum(after, XFER_COUNT)
