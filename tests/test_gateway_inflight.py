"""Embedding answers streamed part by part, and the gateway's in-flight bytes budget
(issue 11, bounded work): a real gateway over simulated embedding servers on loopback."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
from sage_cp_plugin.entrypoints.gateway.errors import GatewayError
from sage_cp_plugin.entrypoints.gateway.inflight import InflightBytes

from tests.helpers import wait_until
from tests.test_gateway_support import embed, gateway_over_sim

TEXTS = [f"text number {i}" for i in range(300)]


async def test_a_streamed_split_answer_is_the_whole_answer_in_input_order() -> None:
    async with gateway_over_sim([embed(), embed()]) as h, h.client() as c:
        h.manager.embedding_batch_size = 32  # 10 parts, over both instances
        r = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": TEXTS})
        assert r.status_code == 200, r.text
        assert r.headers["x-sage-parts"] == "10"
        body = r.json()
        assert [d["index"] for d in body["data"]] == list(range(300))
        # The same vectors, in the same order, as the Python API's own split-and-assemble.
        whole = await h.manager.embed(TEXTS, model_name="sim-embed")
        assert [d["embedding"] for d in body["data"]] == [d["embedding"] for d in whole["data"]]
        assert body["usage"] == whole["usage"] and body["model"] == "sim-embed"
        # base64 answers carry the same vectors as float32.
        b = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": TEXTS,
                                                 "encoding_format": "base64"})  # fmt: skip
        decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b.json()["data"]]
        assert len(decoded) == 300
        for got, want in zip(decoded, body["data"], strict=True):
            np.testing.assert_array_equal(got, np.asarray(want["embedding"], dtype="<f4"))
        assert h.gateway.inflight.held == 0  # every answer gave its bytes back


async def test_a_part_failing_after_the_answer_started_aborts_the_response() -> None:
    """The client must never get a valid-looking answer with vectors missing."""
    async with gateway_over_sim([embed()], instance_fields={"max_concurrent_requests": 1}) as h:
        h.manager.embedding_batch_size = 50  # 6 parts, run one at a time
        async with httpx.AsyncClient() as sim:
            await sim.post(f"{h.fleet.urls[0]}/sim/faults", json={"hang": True})
        async with h.client() as c:
            task = asyncio.create_task(
                c.post(
                    "/v1/embeddings",
                    json={"model": "sim-embed", "input": TEXTS},
                    headers={"x-request-id": "cut"},
                )
            )
            await wait_until(lambda: h.manager.dispatcher.instance_of("cut#0") is not None,
                             "the first part running (and hanging)")  # fmt: skip
            assert h.manager.cancel("cut#2", "test: this part fails")  # still queued
            async with httpx.AsyncClient() as sim:
                await sim.post(f"{h.fleet.urls[0]}/sim/faults", json={})
            with pytest.raises(httpx.RemoteProtocolError):
                await task
        assert (await h.manager.get_request_status("cut#0")).state == "completed"
        await wait_until(lambda: h.gateway.inflight.held == 0, "the bytes given back")


async def test_over_the_inflight_budget_a_request_gets_429_with_retry_after() -> None:
    # 10 inputs reserve 10 x 1536 (dimensions not learned yet) x 32 bytes = 491,520 each.
    async with gateway_over_sim([embed()], settings={"max_inflight_bytes": 600_000}) as h:
        body = {"model": "sim-embed", "input": TEXTS[:10]}
        async with httpx.AsyncClient() as sim:
            await sim.post(f"{h.fleet.urls[0]}/sim/faults", json={"hang": True})
        async with h.client() as c:
            first = asyncio.create_task(c.post("/v1/embeddings", json=body))
            await wait_until(lambda: h.manager.get_metrics().active_requests == 1,
                             "the first request in flight")  # fmt: skip
            refused = await c.post("/v1/embeddings", json=body)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "inflight_bytes_exceeded"
            # Small requests still fit beside it.
            assert h.gateway.inflight.held < 600_000
            async with httpx.AsyncClient() as sim:
                await sim.post(f"{h.fleet.urls[0]}/sim/faults", json={})
            assert (await first).status_code == 200
            assert h.gateway.inflight.held == 0
            again = await c.post("/v1/embeddings", json=body)  # dimensions now learned
            assert again.status_code == 200
            assert h.gateway.inflight.embedding_answer_bytes("sim-embed", 10) < 491_520


def test_a_request_alone_is_admitted_whatever_its_size_and_release_is_idempotent() -> None:
    budget = InflightBytes(limit=1000)
    big = budget.reserve(5000)  # alone: its own caps bound it
    with pytest.raises(GatewayError) as err:
        budget.reserve(1)
    assert err.value.status == 429 and err.value.headers == {"Retry-After": "1"}
    big.release()
    big.release()
    assert budget.held == 0
    small = budget.reserve(400)
    other = budget.reserve(500)
    with pytest.raises(GatewayError):
        other.grow(200)  # 1,100 > 1,000 with another request holding bytes
    assert budget.held == 900 and budget.refused == 2
    small.release()
    other.grow(2000)  # alone again
    assert budget.held == 2500
