"""Property-based hostile bodies against a real `sage-cp serve` process (loopback only).

Hypothesis builds valid OpenAI bodies and then breaks them: a field replaced by any JSON
value, nesting of any depth, text with lone surrogates, NaN, other encodings, other content
types, raw bytes. Properties: never a status >= 500, every error an OpenAI-format JSON
body, and afterwards no instance's circuit was touched (the admin API says so) and normal
requests still succeed. Bounded: a fixed number of examples, no shrinking past a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_gateway_support import GatewayProcess, start_gateway_process, write_config

ADMIN = "fuzz-admin-key"
ENDPOINTS = {
    "/v1/chat/completions": {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 4},
    "/v1/completions": {"model": "sim-model", "prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"model": "sim-embed", "input": ["a", "b"]},
}  # fmt: skip
FIELDS = ["model", "messages", "prompt", "input", "max_tokens", "temperature", "top_p",
          "stream", "stream_options", "n", "stop", "priority", "ttft_slo_ms",
          "encoding_format", "user", "seed", "extra"]  # fmt: skip

# Every code point, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None),
                   max_size=20)  # fmt: skip
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    body: dict[str, Any] = dict(ENDPOINTS[path])
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        body[field] = draw(json_values)
    depth = draw(st.integers(0, 200))
    if depth:
        body["extra"] = json.loads("[" * depth + "]" * depth)
    text = json.dumps(body, ensure_ascii=draw(st.booleans()), allow_nan=True)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1", "surrogatepass"]))
    if encoding == "surrogatepass":
        raw = text.encode("utf-8", "surrogatepass")
    else:
        raw = text.encode(encoding, "replace")
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.binary(max_size=200))
    ctype = draw(st.sampled_from(["application/json", "application/json; charset=utf-8",
                                  "text/plain", "application/x-www-form-urlencoded", ""]))  # fmt: skip
    headers = {"content-type": ctype} if ctype else {}
    if draw(st.booleans()):
        headers["x-sage-priority"] = draw(st.sampled_from(["high", "7", "", "urgent", "0"]))
    return path, raw, headers


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    cfg = write_config(tmp_path_factory.mktemp("fuzz") / "fleet.yaml", time_scale=0.0)
    gp = start_gateway_process("--config", str(cfg), "--admin-key", ADMIN,
                               "--max-body-bytes", "65536")  # fmt: skip
    try:
        yield gp
    finally:
        gp.proc.terminate()
        gp.proc.wait(30)


def _check(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("application/json"), resp.text[:200]
        assert isinstance(resp.json()["error"]["message"], str)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(req=hostile_requests())
def test_hostile_bodies_get_4xx_json_never_5xx(
    gateway: GatewayProcess, req: tuple[str, bytes, dict[str, str]]
) -> None:
    path, raw, headers = req
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        _check(c.post(path, content=raw, headers=headers))


def test_after_the_fuzzing_no_circuit_was_touched(gateway: GatewayProcess) -> None:
    # Runs after the property test in this module (pytest keeps file order).
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        auth = {"authorization": f"Bearer {ADMIN}"}
        instances = c.get("/admin/instances", headers=auth).json()
        rows = instances if isinstance(instances, list) else instances.get("instances", instances)
        items = rows.values() if isinstance(rows, dict) else rows
        assert items
        for inst in items:
            assert inst.get("circuit_open") is False, inst
        assert c.get("/health").json()["status"] == "ok"
        for path, body in ENDPOINTS.items():
            assert c.post(path, json=body).status_code == 200
