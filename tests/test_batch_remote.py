"""Beyond one process: two `sage-cp batch` shards share one `sage-cp serve` coordinator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from sage_cp_plugin.operators.remote import parse_prometheus

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
