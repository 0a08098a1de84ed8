"""The SAGE 0.3.2.4 bugs of docs/architecture.md §7, each shown shielded.

1. plain from_batch -> map -> sink: no service on the fast path; from_source recursion;
2. call_service polls in 10 ms sleeps: our operators never use it;
3. the fast path calls a stateful operator from 8 threads: the batcher locks.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sage.foundation import SinkFunction, SourceFunction
from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import (
    BatchFlatMap,
    ChatMap,
    ConcurrentFlatMap,
    ControlPlaneService,
    EndOfStream,
    RequestBatch,
    RequestBatcher,
    use_control_plane,
    with_end_marker,
)
from sage_cp_plugin.operators.testing import EchoBackend, inprocess_fleet


class Collect(SinkFunction):  # type: ignore[misc]
    def __init__(self, out: list[Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.out = out

    def execute(self, data: Any) -> None:
        self.out.append(data)


@pytest.fixture
def no_call_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 2: fail the test if anything goes through SAGE's polling call_service."""
    from sage.runtime import pipeline_compiler

    def forbidden(*a: Any, **k: Any) -> Any:
        raise AssertionError("call_service was used: it polls in 10 ms sleeps")

    monkeypatch.setattr(pipeline_compiler._LightweightServiceRuntime, "call_service", forbidden)
    monkeypatch.setattr(
        pipeline_compiler._LightweightServiceRuntime, "call_service_async", forbidden
    )


def test_plain_from_batch_map_sink_10000_items(no_call_service: None) -> None:
    items = [f"item-{i}" for i in range(10_000)]
    out: list[Any] = []
    env = LocalEnvironment("plain-10k")
    use_control_plane(env, backend=EchoBackend())
    env.from_batch(items).map(ChatMap).sink(Collect, out=out)
    env.submit(autostop=True)
    assert [r.output for r in out] == items  # none lost, none duplicated, none reordered
    assert all(r.ok for r in out)


def test_plain_pipeline_through_a_real_coordinator(no_call_service: None) -> None:
    items = [f"question {i}" for i in range(200)]
    out: list[Any] = []
    env = LocalEnvironment("plain-real")
    use_control_plane(env, manager_factory=inprocess_fleet())
    env.from_batch(items).map(ChatMap, defaults={"max_tokens": 2}).sink(Collect, out=out)
    env.submit(autostop=True)
    assert len(out) == 200 and all(r.ok for r in out)
    assert [r.custom_id for r in out] == [r.custom_id for r in out if r.custom_id]


def test_without_the_helper_the_fast_path_error_says_what_to_do() -> None:
    env = LocalEnvironment("fast-path")
    env.register_service("control_plane", ControlPlaneService, backend=EchoBackend())
    env.from_batch(["a", "b"]).map(ChatMap).sink(Collect, out=[])
    with pytest.raises(RuntimeError, match="use_control_plane"):
        env.submit(autostop=True)


def test_from_source_job_has_no_recursion(no_call_service: None) -> None:
    class Counter(SourceFunction):  # type: ignore[misc]
        def __init__(self, n: int, **kw: Any) -> None:
            super().__init__(**kw)
            self.n, self.i = n, 0

        def execute(self, *a: Any) -> Any:
            self.i += 1
            if self.i > self.n:
                raise StopIteration
            return f"s{self.i}"

    out: list[Any] = []
    env = LocalEnvironment("from-source")
    use_control_plane(env, backend=EchoBackend())
    env.from_source(Counter, n=2000).map(ChatMap).sink(Collect, out=out)
    env.submit(autostop=True)  # call_service would re-enter the source: RecursionError ~300
    assert [r.output for r in out] == [f"s{i}" for i in range(1, 2001)]


def test_batcher_under_concurrent_calls_loses_nothing() -> None:
    batcher = RequestBatcher(batch_size=7)
    items = list(range(5000))
    emitted: list[Any] = []
    lock = threading.Lock()
    chunks = [items[i::8] for i in range(8)]
    barrier = threading.Barrier(9)

    def worker(chunk: list[int]) -> None:
        barrier.wait()
        for x in chunk:
            out = batcher.execute(x)
            with lock:
                emitted.extend(out)

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    barrier.wait()
    # The end marker overtakes most items, as on SAGE's 8-thread fast path.
    emitted.extend(batcher.execute(EndOfStream(len(items))))
    for t in threads:
        t.join()
    batches = [b for b in emitted if isinstance(b, RequestBatch)]
    got = [x for b in batches for x in b.items]
    assert sorted(got) == items
    assert len(batches) == -(-5000 // 7) and all(len(b) == 7 for b in batches[:-1])
    assert sum(isinstance(e, EndOfStream) for e in emitted) == 1


def test_batcher_on_the_fast_path() -> None:
    """No service involved: SAGE takes its fast path and calls the batcher from 8 threads."""
    out: list[Any] = []
    env = LocalEnvironment("fast-batcher")
    env.from_batch(list(with_end_marker(range(3000)))).flatmap(RequestBatcher, batch_size=16).sink(
        Collect, out=out
    )
    env.submit(autostop=True)
    got = sorted(x for b in out if isinstance(b, RequestBatch) for x in b.items)
    assert got == list(range(3000))
    assert sum(isinstance(e, EndOfStream) for e in out) == 1


def test_batched_pipeline_flushes_last_partial_batch(no_call_service: None) -> None:
    backend = EchoBackend(delay_s=0.01)
    out: list[Any] = []
    env = LocalEnvironment("batched")
    use_control_plane(env, backend=backend)
    (
        env.from_batch(list(with_end_marker(f"x{i}" for i in range(1003))))
        .flatmap(RequestBatcher, batch_size=50)
        .flatmap(BatchFlatMap)
        .sink(Collect, out=out)
    )
    env.submit(autostop=True)
    records = [r for r in out if not isinstance(r, EndOfStream)]
    assert [r.output for r in records] == [f"x{i}" for i in range(1003)]
    assert backend.peak_in_flight == 50


def test_window_keeps_requests_in_flight(no_call_service: None) -> None:
    backend = EchoBackend(delay_s=0.02)
    out: list[Any] = []
    env = LocalEnvironment("window")
    use_control_plane(env, backend=backend)
    (
        env.from_batch(list(with_end_marker(f"w{i}" for i in range(500))))
        .flatmap(ConcurrentFlatMap, max_in_flight=32)
        .sink(Collect, out=out)
    )
    env.submit(autostop=True)
    records = [r for r in out if not isinstance(r, EndOfStream)]
    assert sorted(r.output for r in records) == sorted(f"w{i}" for i in range(500))
    assert backend.peak_in_flight == 32
    assert isinstance(out[-1], EndOfStream)
