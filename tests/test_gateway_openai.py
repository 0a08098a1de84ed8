"""The official `openai` client against `sage-cp serve` over loopback: chat, streaming,
completions, embeddings, models, plus the scheduling headers acting on the policy."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.helpers import wait_until
from tests.test_gateway_support import gateway_over_sim, gen


def _client(url: str, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


async def test_openai_client_chat_completions_embeddings_models() -> None:
    async with gateway_over_sim() as h:
        client = _client(h.url)
        chat = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
        assert chat.object == "chat.completion"
        assert chat.choices[0].message.role == "assistant"
        assert len(chat.choices[0].message.content.split()) == 5
        assert chat.usage is not None and chat.usage.completion_tokens == 5

        comp = await client.completions.create(model="sim-model", prompt="once upon", max_tokens=4)
        assert comp.object == "text_completion"
        assert len(comp.choices[0].text.split()) == 4

        emb = await client.embeddings.create(model="sim-embed", input=["a b", "c d e"])
        assert [d.index for d in emb.data] == [0, 1]
        assert len(emb.data[0].embedding) > 8

        models = await client.models.list()
        assert sorted(m.id for m in models.data) == ["sim-embed", "sim-model"]

        raw = await client.chat.completions.with_raw_response.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
        assert raw.headers["x-sage-request-id"].startswith("req-")
        assert raw.headers["x-sage-instance"] in {"sim-0", "sim-1"}
        assert float(raw.headers["x-sage-e2e-ms"]) > 0
        await client.close()


async def test_openai_client_streaming_chat_and_completion() -> None:
    async with gateway_over_sim() as h:
        client = _client(h.url)
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "tell me"}],
            max_tokens=6,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert len("".join(pieces).split()) == 6
        assert len(pieces) >= 6  # relayed chunk by chunk, not one assembled blob

        stream2 = await client.completions.create(
            model="sim-model",
            prompt="go",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream2]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        assert "".join(c.choices[0].text for c in chunks if c.choices).split().__len__() == 3

        # Without include_usage the client gets no usage-only chunk (as from vLLM).
        stream3 = await client.completions.create(
            model="sim-model", prompt="go", max_tokens=2, stream=True
        )
        assert all(c.choices for c in [c async for c in stream3])
        await client.close()


async def test_openai_client_errors_are_typed() -> None:
    async with gateway_over_sim(settings={"api_key": "secret"}) as h:
        with pytest.raises(openai.AuthenticationError):
            await _client(h.url, "wrong").models.list()
        client = _client(h.url, "secret")
        with pytest.raises(openai.NotFoundError) as err:
            await client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
        assert "sim-model" in str(err.value)  # the message lists what is served
        with pytest.raises(openai.BadRequestError):
            await client.completions.create(model="sim-model", prompt="x", max_tokens=-3)
        await client.close()


async def test_priority_header_changes_the_order_of_service() -> None:
    """One slot, held busy: with the priority policy a `critical` request sent last runs first.

    The instance hangs its first request until the fault is cleared, so the three `low`
    requests and the `critical` one really wait in the coordinator's queue together.
    """
    async with gateway_over_sim(
        gen(1),
        scheduling_policy="priority",
        instance_fields={"max_concurrent_requests": 1},
    ) as h:
        status = h.manager.get_status
        async with h.client() as c, httpx.AsyncClient(base_url=h.fleet.urls[0]) as sim:
            (await sim.post("/sim/faults", json={"hang": True})).raise_for_status()
            body = {"model": "sim-model", "prompt": "p", "max_tokens": 4}
            blocker = asyncio.create_task(c.post("/v1/completions", json=body))
            await wait_until(lambda: status()["running_requests"] == 1, "the blocker to run")
            low = [
                asyncio.create_task(
                    c.post("/v1/completions", json=body, headers={"x-sage-priority": "low"})
                )
                for _ in range(3)
            ]
            await wait_until(lambda: status()["pending_requests"] == 3, "3 queued low requests")
            # Same meaning in the body; the header wins when both are given.
            crit = asyncio.create_task(
                c.post(
                    "/v1/completions",
                    json={**body, "priority": "background"},
                    headers={"x-sage-priority": "critical", "x-sage-user": "alice"},
                )
            )
            await wait_until(lambda: status()["pending_requests"] == 4, "the critical request")
            (await sim.post("/sim/faults", json={"hang": False})).raise_for_status()
            done = [await blocker, *[await t for t in low], await crit]
            assert all(r.status_code == 200 for r in done)
            queue_ms = {i: float(r.headers["x-sage-queue-ms"]) for i, r in enumerate(done)}
            # The critical request (index 4) waited less than every low one.
            assert all(queue_ms[4] < queue_ms[i] for i in (1, 2, 3)), queue_ms


async def test_streamed_answer_names_its_instance_even_when_it_ended_at_once() -> None:
    # Zero-latency instances: the whole stream can be done before the gateway reads its
    # first chunk, when the request no longer runs anywhere; the header still names the
    # instance that answered it.
    async with gateway_over_sim([*gen(2, time_scale=0.0)]) as h:
        async with httpx.AsyncClient(base_url=h.url, timeout=30) as c:
            for _ in range(20):
                async with c.stream(
                    "POST",
                    "/v1/completions",
                    json={"model": "sim-model", "prompt": "go", "max_tokens": 2, "stream": True},
                ) as resp:
                    assert resp.status_code == 200
                    assert resp.headers["x-sage-instance"] in {"sim-0", "sim-1"}
                    await resp.aread()
