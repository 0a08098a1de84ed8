"""Beyond one process: two `sage-cp batch` shards share one `sage-cp serve` coordinator."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from sage_cp_plugin.operators.inputs import PreparedRequest, request_from_body
from sage_cp_plugin.operators.remote import RemoteBackend, parse_prometheus

from sage_cp_plugin.types import RequestKind
from tests.helpers import wait_until
from tests.test_gateway_support import gateway_over_sim, gen

CLI = [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli"]


def test_two_processes_split_one_file_through_one_coordinator(tmp_path: Path) -> None:
    lines = []
    for i in range(60):
        if i % 3 == 2:
            lines.append({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                          "body": {"model": "sim-embed", "input": f"text {i}"}})  # fmt: skip
        else:
            lines.append({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "sim-model", "max_tokens": 4,
                                   "messages": [{"role": "user", "content": f"q{i}"}]},
                          "priority": "high", "ttft_slo_ms": 5000})  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("embedded_fleet:\n  time_scale: 0.05\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        url = None
        for line in server.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the gateway did not start"
        shards = [
            subprocess.Popen(
                [
                    *CLI,
                    "batch",
                    str(src),
                    "-o",
                    str(tmp_path / f"out{i}.jsonl"),
                    "--url",
                    url,
                    "--shard",
                    f"{i}/2",
                    "--no-progress",
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in shards]
        for p, (_, err) in zip(shards, outs, strict=True):
            assert p.returncode == 0, err
        metrics = parse_prometheus(httpx.get(f"{url}/metrics", timeout=10).text)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ids: list[str] = []
    for i in range(2):
        recs = [json.loads(x) for x in (tmp_path / f"out{i}.jsonl").read_text().splitlines()]
        assert len(recs) == 30 and all(r["error"] is None for r in recs)
        ids += [r["custom_id"] for r in recs]
        summary = json.loads(outs[i][0])["summary"]
        assert summary["succeeded"] == 30
    assert sorted(ids) == sorted(x["custom_id"] for x in lines)  # exactly one result per line
    # The coordinator served both processes: all 60 requests show in its metrics.
    assert metrics["sage_cp_requests_total"] == 60
    emb = next(
        json.loads(x)
        for i in range(2)
        for x in (tmp_path / f"out{i}.jsonl").read_text().splitlines()
        if json.loads(x)["custom_id"].startswith("e")
    )
    assert emb["response"]["body"]["data"][0]["embedding"]


def _completion(i: int) -> PreparedRequest:
    body = {"model": "sim-model", "prompt": f"go {i}", "max_tokens": 4, "user": "acme"}
    return PreparedRequest(f"c{i}", request_from_body(body, kind=RequestKind.COMPLETION))


async def test_a_remote_batch_waits_out_a_full_queue_instead_of_failing_lines() -> None:
    """Sustained 429s from a full queue are backpressure: the line waits (within the same
    120 s patience as the in-process backend) and is answered once the queue drains.
    Before: the fourth 429 in a row became the line's error record."""
    async with gateway_over_sim(
        gen(1), max_pending_requests=1, instance_fields={"max_concurrent_requests": 1}
    ) as h:
        backend = RemoteBackend(h.url)
        await backend.start()
        refusals = 0

        async def count(resp: httpx.Response) -> None:
            nonlocal refusals
            refusals += resp.status_code == 429

        assert backend._client is not None
        backend._client.event_hooks["response"].append(count)
        async with httpx.AsyncClient(base_url=h.fleet.urls[0]) as sim:
            (await sim.post("/sim/faults", json={"hang": True})).raise_for_status()
            lines = [asyncio.create_task(backend.run(_completion(i))) for i in range(4)]
            # One line runs, one waits in the queue, two are refused: hold the fleet until
            # each of those two has been refused more often than the old retry budget.
            await wait_until(lambda: refusals >= 10, lambda: f"{refusals} refusals")
            (await sim.post("/sim/faults", json={"hang": False})).raise_for_status()
            records = await asyncio.gather(*lines)
        await backend.stop()
    assert [(r.status_code, r.error) for r in records] == [(200, None)] * 4


async def test_a_spent_quota_is_the_lines_answer_at_once_with_its_code() -> None:
    """A 429 that cannot be outwaited (a quota spent until the hour ends) fails the line on
    the first answer, with the coordinator's code. Before: three more tries 5 s apart,
    then a record saying 'upstream_error'."""
    async with gateway_over_sim(quotas={"period": "hour", "default": {"tokens": 5}}) as h:
        backend = RemoteBackend(h.url)
        await backend.start()
        sent = 0

        async def count(request: httpx.Request) -> None:
            nonlocal sent
            sent += 1

        assert backend._client is not None
        backend._client.event_hooks["request"].append(count)
        first = await backend.run(_completion(0))  # uses more than the 5 tokens
        refused = await backend.run(_completion(1))
        await backend.stop()
    assert first.status_code == 200
    assert refused.status_code == 429 and refused.error is not None
    assert refused.error.code == "insufficient_quota"
    assert sent == 2
