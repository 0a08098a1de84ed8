"""Three `sage-cp serve` processes (separate state, one real redis-server) in front of one
simulated fleet; two `--shard i/n` batch jobs spread over the replicas; one replica is killed
(SIGKILL) mid-job: every line is still answered exactly once, and none failed.

The batch job is the retrying client: a request whose replica died is resent, with the same
request id, to the next replica in its `--url` list, which finds the dead replica's claim on
the id and takes it over (docs/scale-out.md, "Request ids across replicas"); runs are
counted at the simulated engines.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
from sage_cp_plugin.entrypoints.batch import BatchJobOptions, run_batch_job

from sage_cp_plugin.config import sim_instances
from sage_cp_plugin.sim.fleet import SimFleetThread
from tests.helpers import wait_until_sync
from tests.redis_server import RedisServer
from tests.test_gateway_support import gen, start_gateway_process
from tests.test_request_claims_redis import count_runs


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_batch_shards_survive_a_replica_kill(tmp_path: Path) -> None:
    n_lines = 120
    src = tmp_path / "in.jsonl"
    src.write_text("".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "sim-model", "prompt": f"line {i} " * 20, "max_tokens": 12}})
        + "\n" for i in range(n_lines)
    ))  # fmt: skip
    with RedisServer(tmp_path) as redis, SimFleetThread(gen(2, time_scale=0.3)) as sims:
        runs = count_runs(sims.fleet)
        instances = [i.model_dump(mode="json") for i in sim_instances(sims.fleet.members)]
        cfg = tmp_path / "fleet.yaml"
        cfg.write_text(json.dumps({"scheduling_policy": "fifo", "instances": instances}))
        procs = [
            start_gateway_process("--config", str(cfg), "--redis-url", redis.url,
                                  "--replica-id", f"r{i}")
            for i in range(3)
        ]  # fmt: skip
        try:
            urls = ",".join(p.url for p in procs)
            outs = [tmp_path / f"out{i}.jsonl" for i in range(2)]
            results: list[object] = [None, None]

            def shard(i: int) -> None:
                opts = BatchJobOptions(input=src, output=outs[i], url=urls, shard=(i, 2),
                                       concurrency=8, progress=False, fleet_wait_s=30)  # fmt: skip
                results[i] = run_batch_job(opts)

            jobs = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
            for j in jobs:
                j.start()
            wait_until_sync(lambda: sum(count_lines(o) for o in outs) >= 20, "20 lines answered")
            victim = procs[1].proc
            victim.send_signal(signal.SIGKILL)  # mid-job, requests in flight there
            victim.wait(timeout=30)
            for j in jobs:
                j.join(300)
                assert not j.is_alive(), "a batch shard did not finish"
            survivors = [p.url for p in procs if p.proc.poll() is None]
            # A resend finding the dead replica's claim takes it over; one that reached a
            # replica which had lost Redis for a moment (a loaded machine) runs unshared.
            resent = sum(claims(u, "taken_over") + claims(u, "unshared") for u in survivors)
        finally:
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.terminate()
                    p.proc.wait(timeout=30)
    records = [json.loads(x) for o in outs for x in o.read_text().splitlines()]
    ids = [r["custom_id"] for r in records]
    assert sorted(ids) == sorted(f"c{i}" for i in range(n_lines))  # each line exactly once
    failed = [r for r in records if r["error"] is not None]
    assert not failed, failed[:3]
    assert sum(count_lines(o) for o in outs) == n_lines
    # The kill happened while the job ran: lines were answered after it, by the survivors.
    assert victim.returncode == -signal.SIGKILL
    # Every line ran; a line ran twice only if the killed replica was running it (at most
    # the two jobs' 16 in flight), and the resends of those went through the claims: the
    # dead replica's were taken over (a kill landing when it ran nothing resends nothing).
    assert all(runs[f"line {i} " * 20] >= 1 for i in range(n_lines))
    twice = [p for p, k in runs.items() if k > 1]
    assert len(twice) <= 16 and all(runs[p] == 2 for p in twice)
    assert not twice or resent >= 1, twice


def claims(url: str, outcome: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10).text
    key = f'sage_cp_request_claims_total{{outcome="{outcome}"}} '
    return sum(int(float(x[len(key) :])) for x in text.splitlines() if x.startswith(key))
