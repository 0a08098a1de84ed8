"""Operators in pipelines: inputs, records, replicas sharing one coordinator, sinks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from sage.foundation import SinkFunction
from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import (
    ChatMap,
    CompletionMap,
    ConcurrentFlatMap,
    ControlPlaneService,
    EmbeddingMap,
    EndOfStream,
    JsonlSink,
    JsonlSource,
    MetricsSink,
    PreparedRequest,
    ResultRecord,
    SourceLine,
    prepare,
    use_control_plane,
    with_end_marker,
)
from sage_cp_plugin.operators.testing import inprocess_fleet

from sage_cp_plugin.types import RequestMetadata


class Collect(SinkFunction):  # type: ignore[misc]
    def __init__(self, out: list[Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.out = out

    def execute(self, data: Any) -> None:
        self.out.append(data)


def test_inputs_of_every_form() -> None:
    s = prepare("hi", kind="completion")
    assert isinstance(s, PreparedRequest) and s.request.prompt == "hi" and s.kind == "completion"
    r = RequestMetadata(request_id="mine", messages=[{"role": "user", "content": "x"}])
    assert isinstance(p := prepare(r), PreparedRequest) and p.custom_id == "mine"
    d = prepare({"custom_id": "c1", "model": "m", "prompt": "p", "seed": 3, "user": "u"})
    assert isinstance(d, PreparedRequest) and d.custom_id == "c1"
    assert d.request.model_name == "m" and d.request.user_id == "u"
    assert d.request.extra_body == {"seed": 3}
    line = {
        "custom_id": "b1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "sim-embed", "input": ["a"]},
        "priority": "high",
    }
    b = prepare(SourceLine(4, data=line))
    assert isinstance(b, PreparedRequest) and b.kind == "embedding" and b.line == 4
    assert b.request.priority.name == "HIGH"


def test_bad_inputs_become_failed_records() -> None:
    bad_json = prepare(SourceLine(3, error="line 3 is not valid JSON"))
    assert isinstance(bad_json, ResultRecord) and bad_json.custom_id == "line-3"
    url = prepare({"custom_id": "u", "url": "/v1/images", "body": {}})
    assert isinstance(url, ResultRecord) and url.error and url.error.code == "invalid_url"
    body = prepare(
        {"custom_id": "v", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": -2}}
    )
    assert isinstance(body, ResultRecord) and body.error
    assert "body.max_tokens" in body.error.message
    assert isinstance(prepare(42), ResultRecord)
    line = bad_json.to_batch_line()
    assert line["custom_id"] == "line-3" and line["error"]["code"] == "invalid_json"


def test_map_operators_each_endpoint() -> None:
    out: list[Any] = []
    env = LocalEnvironment("endpoints")
    use_control_plane(env, manager_factory=inprocess_fleet())
    src = env.from_batch(["one", "two"])
    src.map(ChatMap, defaults={"max_tokens": 3}).sink(Collect, out=out)
    src.map(CompletionMap, model="sim-model", defaults={"max_tokens": 3}).sink(Collect, out=out)
    src.map(EmbeddingMap, model="sim-embed").sink(Collect, out=out)
    env.submit(autostop=True)
    kinds = sorted(r.kind for r in out)
    assert kinds == ["chat"] * 2 + ["completion"] * 2 + ["embedding"] * 2
    assert all(r.ok for r in out)
    emb = next(r for r in out if r.kind == "embedding")
    assert emb.body["data"][0]["embedding"]


def test_replicas_share_one_coordinator_with_requests_in_flight_together() -> None:
    services: set[int] = set()
    peak = [0]
    stop = threading.Event()

    class Spy(SinkFunction):  # type: ignore[misc]
        def execute(self, data: Any) -> None:
            services.add(id(self.ctx.get_service("control_plane")))

    env = LocalEnvironment("replicas")
    use_control_plane(env, manager_factory=inprocess_fleet(time_scale=0.05))
    out: list[Any] = []
    (
        env.from_batch(
            list(with_end_marker({"prompt": f"r{i}", "max_tokens": 16} for i in range(120)))
        )
        .flatmap(ConcurrentFlatMap, kind="completion", max_in_flight=4, parallelism=2)
        .sink(Collect, out=out)
    )
    env.from_batch(["probe"]).sink(Spy)

    def sample() -> None:
        from sage_cp_plugin.operators.service import _LIVE

        while not stop.is_set():
            for svc in list(_LIVE):
                backend = getattr(svc, "_backend", None)
                manager = getattr(backend, "manager", None)
                if manager is not None:
                    peak[0] = max(peak[0], manager.dispatcher.in_flight_count())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        env.submit(autostop=True)
    finally:
        stop.set()
        sampler.join()
    records = [r for r in out if isinstance(r, ResultRecord)]
    assert len(records) == 120 and all(r.ok for r in records)
    assert len(services) == 1  # every operator saw the same service object: one manager
    # Each replica keeps at most 4 in flight; more than 4 at once means both replicas did.
    assert peak[0] > 4


def test_jsonl_source_and_sink_roundtrip(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"custom_id": f"c{i}", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": f"m{i}"}], "max_tokens": 2}})
        for i in range(20)
    ]  # fmt: skip
    src.write_text("\n".join([*lines[:5], "{not json", "", *lines[5:]]) + "\n")
    out_path = tmp_path / "out.jsonl"
    summaries: list[dict[str, Any]] = []
    env = LocalEnvironment("roundtrip")
    use_control_plane(env, manager_factory=inprocess_fleet())
    records = env.from_batch(JsonlSource, path=str(src)).flatmap(ConcurrentFlatMap, max_in_flight=8)
    records.sink(JsonlSink, path=str(out_path))
    records.sink(MetricsSink, on_summary=summaries.append)
    env.submit(autostop=True)
    written = [json.loads(x) for x in out_path.read_text().splitlines()]
    assert sorted(w["custom_id"] for w in written) == sorted(
        [f"c{i}" for i in range(20)] + ["line-6"]
    )
    ok = next(w for w in written if w["custom_id"] == "c0")
    assert ok["response"]["status_code"] == 200 and ok["error"] is None
    assert ok["response"]["body"]["choices"][0]["message"]["content"] is not None
    assert ok["timings"]["e2e_ms"] > 0
    bad = next(w for w in written if w["custom_id"] == "line-6")
    assert bad["error"]["code"] == "invalid_json"
    (summary,) = summaries
    assert summary["total"] == 21 and summary["failed"] == 1
    assert summary["coordinator"]["completed_requests"] == 20


def test_end_marker_counts_items() -> None:
    assert list(with_end_marker(["a", "b"])) == ["a", "b", EndOfStream(2)]


def test_service_standalone_without_sage() -> None:
    with ControlPlaneService(manager_factory=inprocess_fleet()) as svc:
        futures = [
            svc.submit(f"s{i}", kind="completion", defaults={"max_tokens": 2}) for i in range(10)
        ]
        assert all(f.result().ok for f in futures)
