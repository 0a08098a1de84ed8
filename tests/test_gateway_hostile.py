"""Hostile input at the gateway (issue 11): bad requests are the client's problem only.

Behaviour asserted here: status codes and OpenAI-format JSON errors for every case, the
circuit breakers untouched by malformed requests, idempotent `x-request-id`, truthful
`/health` and `/v1/models`, bounded embedding requests split across instances.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks.hostile_cases import CASES, run_cases
from sage_cp_plugin.health import InstanceHealth
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.types import RequestMetadata, RequestStatus
from tests.test_gateway_support import embed, gateway_over_sim, gen

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _breakers_untouched(manager: ControlPlaneManager) -> None:
    for s in manager.fleet:
        assert not s.circuit_open, s.instance_id
        assert s.consecutive_failures == 0, s.instance_id
        assert s.failed == 0, s.instance_id
        assert not manager.health.health.get(s.instance_id) or not [
            t for t in manager.health.health[s.instance_id].transitions if "circuit" in t[1]
        ]


async def test_the_75_hostile_cases_get_4xx_json_and_never_touch_an_instance() -> None:
    async with gateway_over_sim() as h:
        outcomes = await run_cases(h.url)
        assert len(outcomes) == len(CASES) == 75
        server_errors = [(o.case, o.status, o.body) for o in outcomes if o.status >= 500]
        assert server_errors == []
        not_json = [(o.case, o.status, o.body) for o in outcomes if not o.json_error]
        assert not_json == []
        by_name = {o.case: o.status for o in outcomes}
        # The ones the issue found accepted (200) or crashing (500/502), now refused:
        for name in ("role wizard", "stream yes", "input empty list", "embeddings stream",
                     "text/plain body", "lone surrogate", "nesting 5000", "nesting 100000",
                     "stream_options string", "NaN literal", "100k inputs"):  # fmt: skip
            assert 400 <= by_name[name] < 500, (name, by_name[name])
        assert by_name["text/plain body"] == 415
        assert by_name["header too large"] == 431
        assert by_name["garbage request line"] == 400
        assert by_name["body over limit"] == 413
        assert by_name["unknown model"] == 404
        _breakers_untouched(h.manager)
        async with h.client() as c:
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_malformed_requests_interleaved_with_normal_ones_never_open_a_breaker() -> None:
    bad: list[bytes] = [
        json.dumps({**CHAT, "stream": True, "stream_options": "bad"}).encode(),
        b'{"model":"sim-model","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"sim-model","prompt":"x","extra":' + b"[" * 3000 + b"]" * 3000 + b"}",
        json.dumps({**CHAT, "stream": "yes"}).encode(),
    ]
    async with gateway_over_sim(gen(2)) as h, h.client() as c:
        hdr = {"content-type": "application/json"}
        statuses: list[int] = []
        for i in range(40):  # failure_threshold is 2 here: 3 in a row used to open it
            r = await c.post("/v1/chat/completions", content=bad[i % len(bad)], headers=hdr)
            assert 400 <= r.status_code < 500 and r.json()["error"]["message"], r.text
            ok = await c.post("/v1/chat/completions", json=CHAT)
            statuses.append(ok.status_code)
        assert statuses == [200] * 40
        _breakers_untouched(h.manager)


async def test_a_request_that_cannot_be_encoded_fails_alone_without_judging_the_instance() -> None:
    """Past the gateway (the Python API): the executor refuses to encode it, the request
    fails as invalid, and the instance's failure count and circuit stay as they were."""
    async with gateway_over_sim(gen(1)) as h:
        m = h.manager
        for bad_extra in ({"user": "\ud800"}, {"seed": float("nan")}, {"stream_options": "x"}):
            req = RequestMetadata(prompt="x", model_name="sim-model", stream=True,
                                  extra_body=bad_extra)  # fmt: skip
            result = await m.wait(await m.submit_request(req))
            assert result.state == RequestStatus.FAILED
            assert result.error_type == "invalid_request", result.error
            assert result.attempts == 1  # not retried elsewhere
        _breakers_untouched(m)
        assert (await m.generate("fine", model_name="sim-model", max_tokens=2)).state == "completed"


async def test_a_resent_request_id_joins_the_request_instead_of_failing() -> None:
    async with gateway_over_sim(gen(1, time_scale=0.2)) as h, h.client() as c:
        hdr = {"x-request-id": "client-retry-1"}
        first, second = await asyncio.gather(
            c.post("/v1/chat/completions", json=CHAT, headers=hdr),
            c.post("/v1/chat/completions", json=CHAT, headers=hdr),
        )
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        third = await c.post("/v1/chat/completions", json=CHAT, headers=hdr)  # retained
        assert third.json() == first.json()
        assert h.manager.get_metrics().total_requests == 1  # ran once
        # Streamed resend of a finished request: the whole answer as one chunk, then [DONE].
        s = await c.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=hdr)
        assert s.status_code == 200 and s.text.endswith("data: [DONE]\n\n")
        chunk = json.loads(s.text.split("\n\n")[0].removeprefix("data: "))
        text = first.json()["choices"][0]["message"]["content"]
        assert chunk["choices"][0]["delta"]["content"] == text


async def test_health_and_models_say_which_models_cannot_be_served() -> None:
    async with gateway_over_sim([*gen(1), embed()]) as h, h.client() as c:
        assert (await c.get("/health")).json()["status"] == "ok"
        state = next(s for s in h.manager.fleet if not s.instance.is_embedding)
        # As after an outage, with the cooldown still running for an hour.
        state.circuit_open = True
        record = h.manager.health.health.setdefault(state.instance_id, InstanceHealth())
        record.circuit_opened_at = h.manager.now() + 3600
        body = (await c.get("/health")).json()
        assert body["status"] == "degraded"
        assert body["models"] == {"sim-embed": True, "sim-model": False}
        assert "circuit open" in body["unavailable_models"]["sim-model"]
        assert (await c.get("/health", params={"model": "sim-model"})).status_code == 503
        assert (await c.get("/health", params={"model": "sim-embed"})).status_code == 200
        assert (await c.get("/health", params={"model": "nope"})).status_code == 404
        models = {m["id"]: m["available"] for m in (await c.get("/v1/models")).json()["data"]}
        assert models == {"sim-embed": True, "sim-model": False}
        r = await c.get("/v1/models/sim-model")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        assert (await c.get("/v1/models/sim-embed")).json()["available"] is True
        assert (await c.get("/v1/models/nope")).status_code == 404


async def test_long_embedding_lists_are_split_across_instances_and_huge_ones_refused() -> None:
    two = [embed(), embed()]
    async with gateway_over_sim(two, settings={"max_embedding_inputs": 500}) as h:
        h.manager.embedding_batch_size = 64
        texts = [f"text number {i}" for i in range(300)]
        async with h.client() as c:
            r = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": texts},
                             headers={"x-request-id": "emb-1"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.headers["x-sage-parts"] == "5"
            data = r.json()["data"]
            assert [d["index"] for d in data] == list(range(300))
            # The same texts alone give the same vectors: the order survived the split.
            one = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": texts[137]})
            assert one.json()["data"][0]["embedding"] == data[137]["embedding"]
            again = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": texts},
                                 headers={"x-request-id": "emb-1"})  # fmt: skip
            assert again.json() == r.json()
            big = await c.post("/v1/embeddings", json={"model": "sim-embed", "input": ["w"] * 501})
            assert big.status_code == 400 and big.json()["error"]["code"] == "too_many_inputs"
        assert len({s.instance_id for s in h.manager.fleet if s.completed}) == 2


async def test_result_retention_is_bounded_in_bytes() -> None:
    async with gateway_over_sim([embed()]) as h:
        m = h.manager
        m.results.retention_bytes = 200_000  # a few embedding answers
        for i in range(30):
            await m.embed([f"t{i}-{j}" for j in range(8)], model_name="sim-embed")
        assert 0 < m.results.retained_bytes <= 200_000
        assert len(m.results) < 30


@pytest.mark.parametrize("key", ["", "   ", " padded "])
def test_an_empty_or_whitespace_key_is_refused_at_start_up(key: str) -> None:
    from pydantic import ValidationError
    from sage_cp_plugin.entrypoints.gateway.settings import GatewaySettings

    with pytest.raises(ValidationError, match="must not be empty"):
        GatewaySettings(api_key=key)
    with pytest.raises(ValidationError, match="must not be empty"):
        GatewaySettings(admin_key=key)


def test_the_banner_says_what_is_protected() -> None:
    from sage_cp_plugin.entrypoints.gateway.settings import GatewaySettings

    assert "/v1 is OPEN" in GatewaySettings().auth_summary()
    assert "/admin is disabled" in GatewaySettings().auth_summary()
    s = GatewaySettings(api_key="k", admin_key="a").auth_summary()
    assert "/v1 requires an API key" in s and "/admin requires the admin key" in s
