"""`sage-cp batch` when the fleet goes away: wait, then finish; fail loudly; retry on rerun.

The outage is controlled, not slept through: the fleet (real simulators in process) is
taken out of routing at a chosen request and the job's backoff runs on a virtual clock that
brings it back once 30 virtual seconds have passed. The real-time version is in
benchmarks/bench_hostile.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sage_cp_plugin.entrypoints.batch import BatchJobOptions, run_batch_job
from sage_cp_plugin.entrypoints.cli import main
from sage_cp_plugin.operators import OutageBackoff, ResultRecord
from sage_cp_plugin.operators.inputs import PreparedRequest
from sage_cp_plugin.operators.outage import says_fleet_is_down
from sage_cp_plugin.operators.remote import RemoteBackend
from sage_cp_plugin.operators.testing import inprocess_fleet

from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.types import RequestMetadata
from tests.test_batch_job import chat, results, write_lines
from tests.test_gateway_support import start_gateway_process


class Outage:
    """Takes every instance out of routing at the `at`-th submitted request; `sleep` is the
    backoff's virtual sleep, which brings the fleet back after `down_s` virtual seconds."""

    def __init__(self, at: int, down_s: float | None) -> None:
        self.at, self.down_s = at, down_s
        self.now = 0.0
        self.down_at: float | None = None
        self.back_at: float | None = None
        self.manager: ControlPlaneManager | None = None

    def factory(self) -> Any:
        base = inprocess_fleet()

        @asynccontextmanager
        async def make() -> AsyncIterator[ControlPlaneManager]:
            async with base() as m:
                self.manager = m
                submit, count = m.submit_request, 0

                async def counting_submit(req: Any) -> str:
                    nonlocal count
                    count += 1
                    if count == self.at:
                        self._set_down(True)
                    return await submit(req)

                m.submit_request = counting_submit  # type: ignore[method-assign]
                yield m

        return make

    def _set_down(self, down: bool) -> None:
        assert self.manager is not None
        for s in self.manager.fleet:
            s.draining = down
        if down:
            self.down_at = self.now
        else:
            self.back_at = self.now

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        if (
            self.down_s is not None
            and self.down_at is not None
            and self.back_at is None
            and self.now - self.down_at >= self.down_s
        ):
            self._set_down(False)
        await asyncio.sleep(0)


def test_fleet_down_30s_mid_run_every_line_answered_once_after_it_returns(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat(i) for i in range(60)])
    outage = Outage(at=20, down_s=30.0)
    backoff = OutageBackoff(max_wait_s=120.0, clock=outage.clock, sleep=outage.sleep)
    res = run_batch_job(BatchJobOptions(
        input=src, output=tmp_path / "out.jsonl", progress=False, concurrency=8,
        manager_factory=outage.factory(), outage_backoff=backoff,
    ))  # fmt: skip
    out = results(tmp_path / "out.jsonl")
    assert sorted(o["custom_id"] for o in out) == sorted(f"c{i}" for i in range(60))
    assert all(o["error"] is None for o in out), [o["error"] for o in out if o["error"]]
    assert outage.back_at is not None and outage.down_at is not None
    assert outage.back_at - outage.down_at >= 30.0
    assert res.summary["failed"] == 0 and res.summary["succeeded"] == 60
    assert res.summary["outage_retries"] > 0
    assert res.summary["longest_outage_s"] >= 30.0 - backoff.cap_s


def test_lines_that_finally_fail_exit_nonzero_and_a_rerun_retries_exactly_them(
    tmp_path: Path,
) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat(i) for i in range(30)])
    out_path = tmp_path / "out.jsonl"
    outage = Outage(at=11, down_s=None)  # never comes back within the wait
    backoff = OutageBackoff(max_wait_s=60.0, clock=outage.clock, sleep=outage.sleep)
    first = run_batch_job(BatchJobOptions(
        input=src, output=out_path, progress=False, concurrency=1,
        manager_factory=outage.factory(), outage_backoff=backoff,
    ))  # fmt: skip
    failed = {o["custom_id"] for o in results(out_path) if o["error"] is not None}
    assert first.summary["failed"] == len(failed) == 20  # lines 11..30, after waiting 60 s
    assert outage.now >= 60.0
    assert all(o["response"]["status_code"] == 503 for o in results(out_path) if o["error"])

    second = run_batch_job(BatchJobOptions(
        input=src, output=out_path, progress=False, manager_factory=inprocess_fleet(),
    ))  # fmt: skip
    assert second.retried_failed == 20 and second.written == 20 and second.already_done == 10
    out = results(out_path)
    assert sorted(o["custom_id"] for o in out) == sorted(f"c{i}" for i in range(30))
    assert all(o["error"] is None for o in out)


def test_cli_exit_code_and_summary_when_lines_fail(tmp_path: Path, capsys: Any) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat(i) for i in range(5)])
    cfg = tmp_path / "down.yaml"  # one instance on a port nothing listens on
    cfg.write_text(
        "scheduling_policy: fifo\nmax_attempts: 1\ninstances:\n"
        "  - {instance_id: g0, host: 127.0.0.1, port: 9, model_name: sim-model}\n"
    )
    out = tmp_path / "out.jsonl"
    code = main(["batch", str(src), "-o", str(out), "--config", str(cfg),
                 "--fleet-wait", "0", "--no-progress", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "5 line(s) failed" in captured.err
    assert json.loads(captured.out)["summary"]["failed"] == 5
    code = main(["batch", str(src), "-o", str(out), "--no-progress"])  # embedded fleet
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "retried: 5 line(s)" in captured.out
    assert [o["error"] for o in results(out)] == [None] * 5


def virtual_backoff() -> tuple[list[float], OutageBackoff]:
    """A backoff whose clock is `now[0]`, advanced only by its own sleeps and by the test."""
    now = [0.0]

    async def vsleep(seconds: float) -> None:
        now[0] += seconds

    return now, OutageBackoff(max_wait_s=600.0, clock=lambda: now[0], sleep=vsleep)


async def fine(n: int) -> ResultRecord:
    """Another request of the job, served while the one under test runs."""
    return ResultRecord(custom_id="fine")


def test_a_request_that_fails_again_while_others_succeed_is_not_waited_for() -> None:
    now, backoff = virtual_backoff()

    tries = 0

    async def poison(n: int) -> ResultRecord:
        nonlocal tries
        tries += 1
        now[0] += 0.1
        await backoff.run(fine)  # someone else is served while this one runs
        now[0] += 0.1
        return ResultRecord.failure("p", "upstream_error", "answered HTTP 500", status_code=500)

    record = asyncio.run(backoff.run(poison))
    assert not record.ok and tries == 2  # retried once (could be the outage's edge), then final
    assert now[0] < 10  # not the 600 s a fleet outage may take


def test_no_healthy_instance_is_retried_even_when_others_succeed_during_the_retry() -> None:
    """The race a CI run hit: a retry sent while the fleet was still down fails with "no
    healthy instance" after requests sent just after the fleet returned have succeeded. That
    failure describes the fleet, not the request, so the request is retried and served."""
    now, backoff = virtual_backoff()

    tries = 0

    async def caught_in_the_outage(n: int) -> ResultRecord:
        nonlocal tries
        tries += 1
        if tries <= 2:
            now[0] += 0.1
            await backoff.run(fine)  # the fleet is back for requests sent after this one
            now[0] += 0.1
            return ResultRecord.failure(
                "late", "no_instance_error", "no healthy instance can serve the request",
                status_code=503,
            )  # fmt: skip
        return ResultRecord(custom_id="late")

    record = asyncio.run(backoff.run(caught_in_the_outage))
    assert record.ok and tries == 3


def test_remote_coordinator_without_healthy_instance_is_a_fleet_outage(tmp_path: Path) -> None:
    """`sage-cp batch --url`: the gateway's 503 "no healthy instance" reaches the record as
    the fleet-down code, so the outage backoff waits for the fleet instead of giving the line
    up when other lines happen to succeed (the race a9f3510 fixed for the embedded path)."""
    with socket.socket() as s:  # a port nothing listens on: the fleet is down
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(json.dumps({"instances": [
        {"instance_id": "a", "host": "127.0.0.1", "port": dead_port, "model_name": "m"}
    ]}))  # fmt: skip
    gw = start_gateway_process("--config", str(cfg))

    async def one(i: int) -> ResultRecord:
        backend = RemoteBackend(gw.url, timeout_s=30)
        await backend.start()
        try:
            req = RequestMetadata(request_id=f"r{i}", model_name="m", prompt="x", max_tokens=2)
            return await backend.run(PreparedRequest(custom_id=f"c{i}", request=req))
        finally:
            await backend.stop()

    try:
        records = [asyncio.run(one(i)) for i in range(3)]
    finally:
        gw.proc.terminate()
        gw.proc.wait(timeout=30)
    # The first call finds the instance unreachable and opens its circuit; from then on the
    # gateway has no healthy instance for the model.
    last = records[-1]
    assert last.status_code == 503 and last.error is not None, last
    assert last.error.code == "no_instance_error", last.error
    assert says_fleet_is_down(last)
