"""The request log: what a coordinator writes, rotation and bounds, never blocking the loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sage_cp_plugin.recording import RequestLogRecord
from sage_cp_plugin.recording.config import RequestLogConfig
from sage_cp_plugin.recording.hashing import block_hashes
from sage_cp_plugin.recording.writer import RequestLogWriter, log_files
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual import CoordinatorConfig, InProcessFleet, MemberSpec, run_replay
from sage_cp_plugin.workloads import WorkloadRecord, synthetic


def _read(folder: Path) -> list[RequestLogRecord]:
    return [
        RequestLogRecord.model_validate_json(line)
        for f in log_files(folder)
        for line in f.read_text().splitlines()
    ]


def test_every_finished_request_is_logged_with_its_decision_and_no_text(tmp_path: Path) -> None:
    work = [
        WorkloadRecord(arrival_s=0.1 * i, input_tokens=1100, output_tokens=4, prefix_blocks=(7,))
        for i in range(6)
    ]
    fleet = InProcessFleet([MemberSpec(SimInstanceConfig(seed=i)) for i in range(2)])
    cfg = CoordinatorConfig(
        router="round_robin",
        extra={"request_log": {"path": str(tmp_path), "salt": "s"}},
    )
    res = run_replay(work, fleet, cfg)
    recs = sorted(_read(tmp_path), key=lambda r: r.arrival_s)
    assert [r.request_id for r in recs] == [f"r{i}" for i in range(6)]
    for rec, out in zip(recs, res.outcomes, strict=True):
        assert rec.decision.instance_id == out.instance_id
        assert rec.decision.router == "round_robin"
        assert rec.state.value == "completed"
        assert rec.output_tokens == 4
        assert rec.input_tokens == 1100 and rec.input_tokens_source == "engine"
        assert rec.timings.ttft_ms == out.ttft_ms
        assert rec.prompt is None
        # Two full 512-token blocks: the shared block 7, then a private one.
        assert len(rec.prefix_hashes) == 2
    assert np.allclose(np.diff([r.arrival_s for r in recs]), 0.1)
    assert len({r.prefix_hashes[0] for r in recs}) == 1  # the shared block hashes alike
    assert len({r.prefix_hashes[1] for r in recs}) == 6  # private blocks never collide
    assert "h7" not in "".join(f.read_text() for f in log_files(tmp_path))


def test_text_is_written_only_when_enabled(tmp_path: Path) -> None:
    work = synthetic(
        np.random.default_rng(0), 3, rate=5.0, input_tokens=(8, 16), output_tokens=(2, 3)
    )
    fleet = InProcessFleet([SimInstanceConfig()])
    cfg = CoordinatorConfig(extra={"request_log": {"path": str(tmp_path), "text": True}})
    run_replay(work, fleet, cfg)
    recs = _read(tmp_path)
    assert len(recs) == 3 and all(
        r.prompt and len(r.prompt.split()) == r.input_tokens for r in recs
    )


def test_salt_changes_hashes_and_chaining_makes_them_positional() -> None:
    toks = [str(i) for i in range(40)]
    a = block_hashes(toks, 10, b"a")
    assert len(a) == 4 and a == block_hashes(toks, 10, b"a")
    assert set(a).isdisjoint(block_hashes(toks, 10, b"b"))
    # The same block after a different prefix hashes differently (it is not the same KV).
    swapped = toks[10:20] + toks[:10] + toks[20:]
    assert block_hashes(swapped, 10, b"a")[1] != a[0]
    assert block_hashes(toks[:9], 10, b"a") == []


def _rec(i: int) -> RequestLogRecord:
    return RequestLogRecord(request_id=f"r{i:05d}", arrival_s=1.0, input_tokens=10)


def test_files_rotate_and_the_oldest_are_deleted(tmp_path: Path) -> None:
    line_bytes = len(_rec(0).model_dump_json(exclude_none=True)) + 1
    w = RequestLogWriter(
        RequestLogConfig(path=str(tmp_path), max_file_bytes=line_bytes * 10, max_files=3)
    )
    for i in range(100):
        assert w.submit(lambda i=i: _rec(i))
    w.close()
    files = log_files(tmp_path)
    assert [f.name for f in files] == [
        "requests-000008.jsonl",
        "requests-000009.jsonl",
        "requests-000010.jsonl",
    ]
    ids = [json.loads(x)["request_id"] for f in files for x in f.read_text().splitlines()]
    assert ids == [f"r{i:05d}" for i in range(70, 100)]
    # A new writer on the same folder continues the numbering instead of overwriting.
    w2 = RequestLogWriter(RequestLogConfig(path=str(tmp_path), max_file_bytes=10**6))
    w2.submit(lambda: _rec(100))
    w2.close()
    assert log_files(tmp_path)[-1].name == "requests-000011.jsonl"


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    import threading

    gate = threading.Event()
    w = RequestLogWriter(RequestLogConfig(path=str(tmp_path), queue_size=2))

    def slow() -> RequestLogRecord:
        gate.wait()  # the disk is stuck
        return _rec(0)

    assert w.submit(slow)
    # The writer holds `slow`; two more fit in the queue, the rest are dropped at once.
    results = [w.submit(lambda: _rec(1)) for _ in range(5)]
    assert w.dropped == results.count(False) and w.dropped >= 3
    gate.set()
    w.close()
    assert w.written == 1 + results.count(True)


def test_batch_job_and_gateway_flag_record_with_their_source(tmp_path: Path) -> None:
    from sage_cp_plugin.entrypoints.batch import BatchJobOptions, run_batch_job

    from sage_cp_plugin.recording.config import request_log_for

    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"c{i}",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "sim-model",
                        "messages": [{"role": "user", "content": f"q{i}"}],
                        "max_tokens": 3,
                    },
                }
            )
            + "\n"
            for i in range(5)
        )
    )
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("embedded_fleet:\n  time_scale: 0.05\n")  # real simulator servers
    res = run_batch_job(
        BatchJobOptions(
            input=src,
            output=tmp_path / "out.jsonl",
            config=cfg,
            progress=False,
            request_log=tmp_path / "log",
        )
    )
    assert res.summary["failed"] == 0
    recs = _read(tmp_path / "log")
    assert len(recs) == 5 and {r.source for r in recs} == {"batch"}
    assert all(r.output_tokens == 3 and r.decision.instance_id for r in recs)
    # The gateway's flag: its path wins, its source applies unless the file named one.
    filed = RequestLogConfig(path="a", source="api")
    assert request_log_for(None, None, "gateway") is None
    assert request_log_for(None, "d", "gateway") == RequestLogConfig(path="d", source="gateway")
    assert request_log_for(filed, "d", "gateway") == RequestLogConfig(path="d", source="api")
    assert request_log_for(RequestLogConfig(path="a"), None, "gateway").source == "gateway"  # type: ignore[union-attr]
