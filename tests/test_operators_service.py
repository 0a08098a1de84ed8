"""ControlPlaneService: config forms, thread-safety, batches, lifecycle (also when a job raises)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sage.foundation import MapFunction, SinkFunction
from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import (
    ChatMap,
    ControlPlaneService,
    ServiceClosedError,
    use_control_plane,
)
from sage_cp_plugin.operators.testing import EchoBackend, inprocess_fleet

from sage_cp_plugin.config import ControlPlaneConfig
from sage_cp_plugin.errors import ConfigurationError
from tests.helpers import wait_until_sync

FAST = {"embedded_fleet": {"time_scale": 0.0, "generation_instances": 1}}


def service_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sage-cp-service" and t.is_alive()]


def wait_no_service_threads(timeout: float = 10.0) -> None:
    wait_until_sync(lambda: not service_threads(), "the service threads to end", timeout)


@pytest.mark.parametrize("form", ["object", "dict", "yaml", "toml"])
def test_config_forms_and_embedded_fleet(form: str, tmp_path: Path) -> None:
    source: Any
    if form == "object":
        source = ControlPlaneConfig(**FAST)
    elif form == "dict":
        source = FAST
    elif form == "yaml":
        source = tmp_path / "fleet.yaml"
        source.write_text("embedded_fleet:\n  time_scale: 0.0\n  generation_instances: 1\n")
    else:
        source = tmp_path / "fleet.toml"
        source.write_text("[embedded_fleet]\ntime_scale = 0.0\ngeneration_instances = 1\n")
    with ControlPlaneService(source) as svc:
        rec = svc.run("Hello", defaults={"max_tokens": 4})
        emb = svc.run({"input": ["a", "b"], "model": "sim-embed"})
        assert svc.metrics()["completed_requests"] == 2
    assert rec.ok and rec.output and rec.kind == "chat" and rec.timings.e2e_ms
    assert emb.ok and emb.kind == "embedding" and len(emb.body["data"]) == 2  # type: ignore[index]
    wait_no_service_threads()


def test_unreadable_config_is_one_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("instances: [oops\n")
    with pytest.raises(ConfigurationError, match=r"fleet\.yaml"):
        ControlPlaneService(bad)
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        ControlPlaneService(tmp_path / "missing.yaml")
    with pytest.raises(ConfigurationError, match="scheduling_polcy"):
        ControlPlaneService({"scheduling_polcy": "fifo"})


def test_thread_is_daemon_and_close_is_idempotent() -> None:
    svc = ControlPlaneService(backend=EchoBackend())
    assert svc.run("x").output == "x"
    (thread,) = service_threads()
    assert thread.daemon
    svc.close()
    svc.close()
    wait_no_service_threads()
    with pytest.raises(ServiceClosedError):
        svc.run("again")


def test_batch_runs_concurrently_in_order() -> None:
    backend = EchoBackend(delay_s=0.05)
    with ControlPlaneService(backend=backend) as svc:
        records = svc.run_batch([f"p{i}" for i in range(40)])
    assert [r.output for r in records] == [f"p{i}" for i in range(40)]
    assert backend.peak_in_flight == 40  # one call, forty requests at once


def test_calls_from_many_threads() -> None:
    backend = EchoBackend(delay_s=0.01)
    results: list[str] = []
    lock = threading.Lock()
    with ControlPlaneService(backend=backend) as svc:

        def worker(k: int) -> None:
            for i in range(25):
                out = svc.run(f"{k}-{i}").output
                with lock:
                    results.append(str(out))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == sorted(f"{k}-{i}" for k in range(8) for i in range(25))
    assert backend.peak_in_flight > 1


def test_real_manager_runs_a_batch_concurrently() -> None:
    with ControlPlaneService(manager_factory=inprocess_fleet(time_scale=0.02)) as svc:
        records = svc.run_batch(
            [{"prompt": f"q{i}", "max_tokens": 8} for i in range(30)], kind="completion"
        )
        m = svc.metrics()
    assert all(r.ok for r in records) and m["completed_requests"] == 30
    assert {r.instance_id for r in records} >= {"sim-0", "sim-1"}


class Boom(MapFunction):  # type: ignore[misc]
    def execute(self, data: Any) -> Any:
        if getattr(data, "output", "") == "p5":
            raise RuntimeError("operator failed on purpose")
        return data


def test_service_closes_when_an_operator_raises() -> None:
    env = LocalEnvironment("raising")
    use_control_plane(env, backend=EchoBackend())
    env.from_batch([f"p{i}" for i in range(20)]).map(ChatMap).map(Boom).sink(_Append, out=[])
    with pytest.raises(RuntimeError, match="on purpose"):
        env.submit(autostop=True)
    wait_no_service_threads()


def test_service_closes_when_a_streaming_job_is_stopped() -> None:
    from sage.foundation import SourceFunction

    class Ticks(SourceFunction):  # type: ignore[misc]
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.n = 0

        def execute(self, *a: Any) -> Any:
            self.n += 1
            time.sleep(0.005)
            return f"t{self.n}"

    seen: list[Any] = []
    env = LocalEnvironment("streaming")
    use_control_plane(env, backend=EchoBackend())
    env.from_source(Ticks).map(ChatMap).sink(_Append, out=seen)
    env.submit(autostop=False)
    wait_until_sync(lambda: len(seen) >= 20, "20 streamed results")
    env.stop()
    assert seen[0].output == "t1"
    wait_no_service_threads()


class _Append(SinkFunction):  # type: ignore[misc]
    def __init__(self, out: list[Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.out = out

    def execute(self, data: Any) -> None:
        self.out.append(data)


def test_a_spent_quota_fails_a_batch_item_with_why_not_the_batch() -> None:
    """A refusal the request could outwait only after the admission patience (a quota spent
    until the period ends) is a failed record saying why; the batch goes on."""
    config = {**FAST, "quotas": {"period": "day", "default": {"tokens": 1}}}
    with ControlPlaneService(config=config) as svc:
        first = svc.run_batch([{"prompt": "q", "max_tokens": 4, "user_id": "acme"}])
        later = svc.run_batch(
            [
                {"prompt": "q", "max_tokens": 4, "user_id": "acme"},
                {"prompt": "q", "max_tokens": 4, "user_id": "other"},
            ]
        )
    assert first[0].ok
    assert not later[0].ok and later[0].error is not None
    assert later[0].error.code == "insufficient_quota" and later[0].status_code == 429
    assert later[1].ok  # another tenant, its own quota
