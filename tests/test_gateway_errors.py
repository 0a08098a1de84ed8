"""Bad input at the gateway: each case gets the right status and an OpenAI-format error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.test_gateway_support import gateway_over_sim


def _err(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


async def test_bad_bodies_get_400_naming_the_problem() -> None:
    async with gateway_over_sim() as h, h.client() as c:
        post = c.post
        hdr = {"content-type": "application/json"}
        err = _err(await post("/v1/completions", content=b"{not json", headers=hdr), 400)
        assert "not valid JSON" in err["message"]
        err = _err(await post("/v1/completions", content=b"", headers=hdr), 400)
        assert "empty" in err["message"]
        err = _err(await post("/v1/chat/completions", json=[1, 2]), 400)
        assert "JSON object" in err["message"]
        err = _err(await post("/v1/completions", json={"prompt": "x"}), 400)
        assert err["param"] == "model" and "required" in err["message"]
        err = _err(await post("/v1/chat/completions", json={"model": "sim-model"}), 400)
        assert err["param"] == "messages"
        err = _err(await post("/v1/embeddings", json={"model": "sim-embed"}), 400)
        assert err["param"] == "input"
        # Wrong types, each named.
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("/v1/completions", {"model": "sim-model", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
            ("/v1/completions", {"model": 7, "prompt": "x"}, "model"),
            ("/v1/completions", {"model": "sim-model", "prompt": {"a": 1}}, "prompt"),
            ("/v1/completions", {"model": "sim-model", "prompt": ["a", "b"]}, "prompt"),
            ("/v1/completions", {"model": "sim-model", "prompt": "x", "temperature": -1}, "temperature"),
            ("/v1/completions", {"model": "sim-model", "prompt": "x", "stream": "yes please"}, "stream"),
            ("/v1/chat/completions", {"model": "sim-model", "messages": "hi"}, "messages"),
            ("/v1/chat/completions", {"model": "sim-model", "messages": [{"content": "x"}]}, "messages[0].role"),
            ("/v1/embeddings", {"model": "sim-embed", "input": [1, 2, 3]}, "input"),
            ("/v1/embeddings", {"model": "sim-embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
            ("/v1/completions", {"model": "sim-model", "prompt": "x", "priority": "urgent"}, "priority"),
            ("/v1/completions", {"model": "sim-model", "prompt": "x", "ttft_slo_ms": -5}, "ttft_slo_ms"),
            ("/v1/completions", {"model": "sim-model", "prompt": "x", "stream_options": [None]}, "stream_options"),
        ]  # fmt: skip
        for path, body, param in cases:
            err = _err(await post(path, json=body), 400)
            assert err["param"] == param, (body, err)
        bad_headers = {
            "x-sage-priority": "urgent",
            "x-sage-slo-ttft-ms": "soon",
            "x-sage-deadline-ms": "-1",
            "x-sage-cost-budget": "inf",
        }
        for name, value in bad_headers.items():
            body = {"model": "sim-model", "prompt": "x", "max_tokens": 1}
            err = _err(await post("/v1/completions", json=body, headers={name: value}), 400)
            assert err["param"] == name
        # An instance's own 4xx (here: n=2, which it refuses) keeps its code.
        two = {"model": "sim-model", "prompt": "w", "max_tokens": 1, "n": 2}
        err = _err(await post("/v1/completions", json=two), 400)
        assert "sim-" in err["message"]


async def test_unknown_model_404_and_unknown_routes() -> None:
    async with gateway_over_sim() as h, h.client() as c:
        err = _err(await c.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404)
        assert err["param"] == "model" and "sim-model" in err["message"]
        err = _err(await c.post("/v1/embeddings", json={"model": "sim-model", "input": "x"}), 404)
        _err(await c.get("/v1/nothing"), 404)
        _err(await c.get("/v1/completions"), 405)


async def test_api_key_and_admin_key() -> None:
    async with (
        gateway_over_sim(settings={"api_key": "k1", "admin_key": "adm"}) as h,
        h.client() as c,
    ):
        body = {"model": "sim-model", "prompt": "x", "max_tokens": 1}
        err = _err(await c.post("/v1/completions", json=body), 401)
        assert err["code"] == "missing_api_key"
        _err(
            await c.post("/v1/completions", json=body, headers={"authorization": "Bearer no"}), 401
        )
        _err(await c.get("/v1/models", headers={"authorization": "Basic abc"}), 401)
        ok = await c.post("/v1/completions", json=body, headers={"authorization": "Bearer k1"})
        assert ok.status_code == 200
        ok = await c.get("/v1/models", headers={"x-api-key": "k1"})
        assert ok.status_code == 200
        # /health and /metrics stay open for probes and scrapers.
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        # Admin: the client key is not the admin key.
        _err(await c.get("/admin/instances"), 401)
        _err(await c.get("/admin/instances", headers={"authorization": "Bearer k1"}), 403)
        ok = await c.get("/admin/instances", headers={"authorization": "Bearer adm"})
        assert ok.status_code == 200
    async with gateway_over_sim(configs=None) as h, h.client() as c:
        err = _err(await c.get("/admin/instances", headers={"authorization": "Bearer x"}), 403)
        assert "--admin-key" in err["message"]  # disabled without a key


async def test_oversized_bodies_get_413() -> None:
    async with gateway_over_sim(settings={"max_body_bytes": 1000}) as h, h.client() as c:
        big = {"model": "sim-model", "prompt": "x" * 2000}
        err = _err(await c.post("/v1/completions", json=big), 413)
        assert "1000" in err["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(50):
                yield b" " * 100
                await asyncio.sleep(0)

        resp = await c.post(
            "/v1/completions", content=chunked(), headers={"content-type": "application/json"}
        )
        _err(resp, 413)
        ok = await c.post(
            "/v1/completions", json={"model": "sim-model", "prompt": "x", "max_tokens": 1}
        )
        assert ok.status_code == 200
