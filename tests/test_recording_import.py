"""Importers into `sage-cp replay`: the request log and OpenAI batch files, with errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.recording import RequestLogRecord
from sage_cp_plugin.recording.importer import import_openai_batch
from sage_cp_plugin.workloads.traces import detect_format, read_trace


def _batch(tmp_path: Path, lines: list[dict[str, object]]) -> Path:
    p = tmp_path / "batch.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def _chat(i: int, text: str, max_tokens: int | None = 16) -> dict[str, object]:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_openai_batch_lengths_sharing_and_stated_assumptions(tmp_path: Path) -> None:
    system = " ".join(f"s{i}" for i in range(512))
    p = _batch(
        tmp_path,
        [
            _chat(0, system + " first question here"),
            _chat(1, system + " another one", max_tokens=None),
            {"custom_id": "e", "url": "/v1/embeddings", "body": {"input": "x"}},
        ],
    )
    assert detect_format(p) == "openai_batch"
    words = import_openai_batch(p, tokenizer="words")
    assert [r.input_tokens for r in words.records] == [515, 514]
    assert [r.output_tokens for r in words.records] == [16, 128]
    assert words.records[0].prefix_blocks == words.records[1].prefix_blocks != ()
    assert words.skipped == {"embedding": 1} and not words.timed
    assert any("128 output tokens assumed" in n for n in words.notes)
    est = read_trace(p)  # default: the 4-characters-per-token estimate, said so
    assert est.format == "openai_batch" and any("4 characters" in n for n in est.notes)
    assert est.records[0].input_tokens == -(-len(system + " first question here") // 4)


def test_openai_batch_bad_lines_name_file_line_and_field(tmp_path: Path) -> None:
    p = _batch(tmp_path, [_chat(0, "ok"), {"custom_id": "x", "body": {"messages": "no"}}])
    with pytest.raises(ConfigurationError, match=r"batch.jsonl:2: .*'messages'"):
        import_openai_batch(p)
    p = _batch(tmp_path, [_chat(0, "ok", max_tokens=0)])
    with pytest.raises(ConfigurationError, match=r"batch.jsonl:1: .*max_tokens"):
        import_openai_batch(p)
    # transformers is not a dependency: naming a Hugging Face tokenizer says what to install.
    with pytest.raises(ConfigurationError, match="needs the transformers package"):
        import_openai_batch(_batch(tmp_path, [_chat(0, "ok")]), tokenizer="some/model")


def test_a_bad_log_line_names_the_file_line_and_field(tmp_path: Path) -> None:
    good = RequestLogRecord(request_id="a", arrival_s=0.0, input_tokens=5).model_dump_json()
    (tmp_path / "requests-000001.jsonl").write_text(
        good + "\n" + '{"request_id": "b", "arrival_s": "soon", "decision": {}}\n'
    )
    with pytest.raises(ConfigurationError, match=r"requests-000001.jsonl:2: .*'arrival_s'"):
        read_trace(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match="no request log files"):
        read_trace(empty)


def test_sage_cp_replay_takes_a_log_folder(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.mkdir()
    lines = [
        RequestLogRecord(
            request_id=f"q{i}",
            arrival_s=0.05 * i,
            input_tokens=300,
            output_tokens=4,
            decision={"instance_id": "sim-0"},
        ).model_dump_json()
        for i in range(12)
    ]
    (log / "requests-000001.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "replay", str(log),
         "--time-scale", "1", "--instances", "2", "--routers", "round_robin",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["workload"]["format"] == "log" and data["workload"]["requests"] == 12
    assert data["variants"][0]["completed"] == 12
