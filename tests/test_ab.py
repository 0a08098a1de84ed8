"""A/B experiments: sticky arm assignment, the experiment router (split traffic, split
fleet), the outcome log and `sage-cp ab report`, the admin API, and the Done-when check: the
Azure conversation trace through a real `sage-cp serve` process over simulated HTTP
instances, two routers as arms, against the same experiment replayed offline.

Only the GPU engines are simulated (vLLM-compatible simulator servers on loopback).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from sage_cp_plugin.entrypoints.cli import main

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.config import sim_instances
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.experiments.arms import ArmConfig, assign_arm
from sage_cp_plugin.experiments.offline import replay_experiment
from sage_cp_plugin.experiments.report import ab_report, read_outcomes
from sage_cp_plugin.experiments.router import ExperimentRouter
from sage_cp_plugin.sim import SimFleet, SimInstanceConfig
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.workloads.prompts import PromptBuilder
from sage_cp_plugin.workloads.synthetic import mean_rate
from sage_cp_plugin.workloads.traces import read_trace
from tests.test_fields import on_virtual_fleet, req, sims
from tests.test_gateway_support import start_gateway_process

ARMS = [{"name": "rr", "router": "round_robin"}, {"name": "lb", "router": "load_balanced"}]


# -- assignment ------------------------------------------------------------------------------
def test_assignment_is_sticky_and_follows_the_shares() -> None:
    arms = [ArmConfig(name="a", router="round_robin", share=0.3),
            ArmConfig(name="b", router="round_robin", share=0.7)]  # fmt: skip
    keys = [f"user-{i}" for i in range(10_000)]
    first = [assign_arm(k, arms, salt="x") for k in keys]
    assert first == [assign_arm(k, arms, salt="x") for k in keys]  # sticky
    assert first.count("a") / len(keys) == pytest.approx(0.3, abs=0.02)
    other = [assign_arm(k, arms, salt="y") for k in keys]  # another experiment: independent
    assert 0.3 < sum(a != b for a, b in zip(first, other, strict=True)) / len(keys) < 0.5
    stopped = [ArmConfig(name="a", router="round_robin", share=0.0), arms[1]]
    assert {assign_arm(k, stopped) for k in keys[:200]} == {"b"}


def test_sticky_by_user_keeps_a_user_in_one_arm() -> None:
    router = ExperimentRouter(experiment="e", sticky_by="user", arms=ARMS)
    arms = {router.assign(req(user_id="alice")) for _ in range(20)}
    assert len(arms) == 1
    by_request = ExperimentRouter(experiment="e", sticky_by="request", arms=ARMS)
    spread = {by_request.assign(req(user_id="alice")) for _ in range(40)}
    assert spread == {"rr", "lb"}  # new request ids: both arms


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"arms": []}, "arms"),
        ({"arms": [ARMS[0], ARMS[0]]}, "unique"),
        ({"arms": ARMS, "mode": "split_fleet"}, "must list its `instances`"),
        ({"arms": [{"name": "x", "router": "nope"}]}, "nope"),
    ],
)
def test_bad_experiments_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ExperimentRouter(**options)


def test_split_fleet_keeps_each_arm_on_its_instances() -> None:
    arms = [{**ARMS[0], "instances": ["sim-0"]}, {**ARMS[1], "instances": ["sim-1", "sim-2"]}]

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        router = m.router
        assert isinstance(router, ExperimentRouter)
        results = [await m.generate(request=router.tagged(req())) for _ in range(30)]
        where: dict[str, set[str]] = {}
        for r in results:
            where.setdefault(r.tags["arm"], set()).add(r.instance_id or "")
        assert where == {"rr": {"sim-0"}, "lb": {"sim-1", "sim-2"}}
        cost = m.get_metrics().cost_by_tag
        assert set(cost) == {"arm=rr", "arm=lb"} and all(v > 0 for v in cost.values())

    options = {"mode": "split_fleet", "sticky_by": "request", "arms": arms}
    on_virtual_fleet(
        sims(3, price_per_1k_tokens=1.0),
        body,
        routing_strategy="experiment",
        router_options=options,
    )


def test_split_fleet_arm_waits_in_its_own_lane() -> None:
    """A split-fleet arm whose instance is busy never holds another arm's requests back: each
    arm waits in its own lane of the queue (one shared FIFO heap made the second arm's requests
    wait until every request of the first had left the queue)."""
    arms = [{**ARMS[0], "name": "a", "instances": ["sim-0"]},
            {**ARMS[1], "name": "b", "instances": ["sim-1"]}]  # fmt: skip

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        busy = [await m.submit_request(req(tags={"arm": "a"}, max_tokens=64)) for _ in range(8)]
        other = await m.submit_request(req(tags={"arm": "b"}, max_tokens=64))
        done_b = await m.wait(other)
        done_a = [await m.wait(rid) for rid in busy]
        assert all(r.state == "completed" for r in [*done_a, done_b])
        assert done_b.instance_id == "sim-1"
        # b's request started at once on its idle instance, while a's queued behind one slot.
        assert (done_b.timings.queue_ms or 0.0) < 1.0
        assert max(r.timings.queue_ms or 0.0 for r in done_a) > 100.0

    options = {"mode": "split_fleet", "sticky_by": "request", "arms": arms}
    on_virtual_fleet(sims(2, cap=1), body, routing_strategy="experiment", router_options=options)


def test_split_fleet_arm_orders_its_lane_with_its_own_policy() -> None:
    """Ordering policies compared live: arm `p` orders its lane by priority, arm `f` keeps the
    coordinator's FIFO; the same arrivals run in a different order on each arm."""
    arms = [{"name": "p", "router": "round_robin", "instances": ["sim-0"], "policy": "priority"},
            {"name": "f", "router": "round_robin", "instances": ["sim-1"]}]  # fmt: skip
    prios = ["low", "low", "low", "high", "high"]

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        ids: dict[str, list[str]] = {"p": [], "f": []}
        for arm in ("p", "f"):
            for pr in prios:
                r = req(tags={"arm": arm}, priority=pr, max_tokens=32)
                ids[arm].append(await m.submit_request(r))
        started: dict[str, list[str]] = {}
        for arm, rids in ids.items():
            results = [await m.wait(rid) for rid in rids]
            assert all(r.state == "completed" for r in results)
            # Start order on the arm's one-slot instance: arrival + time queued.
            order = sorted(range(len(rids)), key=lambda i: results[i].timings.queue_ms or 0.0)
            started[arm] = [prios[i] for i in order]
        # All ten wait before the first dispatch round: the priority lane runs its two
        # high-priority requests first, the FIFO lane runs them in arrival order.
        assert started["p"] == ["high", "high", "low", "low", "low"]
        assert started["f"] == prios
        assert m.router.lane_policies()["p"].name == "priority"

    options = {"mode": "split_fleet", "sticky_by": "request", "arms": arms}
    on_virtual_fleet(sims(2, cap=1), body, routing_strategy="experiment", router_options=options)


def test_an_arms_policy_changed_at_run_time_reorders_its_queued_requests() -> None:
    arms = [{"name": "p", "router": "round_robin", "instances": ["sim-0"]},
            {"name": "f", "router": "round_robin", "instances": ["sim-1"]}]  # fmt: skip
    prios = ["low", "low", "high", "low", "high"]

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        rids = [await m.submit_request(req(tags={"arm": "p"}, priority=pr)) for pr in prios]
        router = m.router
        assert isinstance(router, ExperimentRouter)
        router.update_arm("p", policy="priority")  # queued under FIFO keys: re-keyed
        results = [await m.wait(rid) for rid in rids]
        order = sorted(range(len(rids)), key=lambda i: results[i].timings.queue_ms or 0.0)
        assert [prios[i] for i in order] == ["high", "high", "low", "low", "low"]
        decision = results[2].decision
        assert decision is not None and "priority" in str(decision.policy)

    options = {"mode": "split_fleet", "sticky_by": "request", "arms": arms}
    on_virtual_fleet(sims(2, cap=1), body, routing_strategy="experiment", router_options=options)


def test_arm_policy_needs_a_fleet_of_its_own() -> None:
    with pytest.raises(ConfigurationError, match="needs mode split_fleet"):
        ExperimentRouter(arms=[{**ARMS[0], "policy": "priority"}, ARMS[1]])
    with pytest.raises(ConfigurationError, match="nope"):
        ExperimentRouter(mode="split_fleet", arms=[
            {**ARMS[0], "instances": ["a"], "policy": "nope"}, {**ARMS[1], "instances": ["b"]}
        ])  # fmt: skip


# -- the report ------------------------------------------------------------------------------
def _rows(arm: str, e2e: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"arm": arm, "state": "completed", "e2e_ms": float(v), "ttft_ms": float(v) / 10,
         "tpot_ms": 5.0, "slo_met": bool(v < 1000), "cost": 0.001}
        for v in e2e
    ]  # fmt: skip


def test_report_flags_a_real_difference_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    a = _rows("a", rng.lognormal(6.5, 0.3, 400))
    same = _rows("b", rng.lognormal(6.5, 0.3, 400))
    slower = _rows("c", rng.lognormal(6.9, 0.3, 400))
    doc = ab_report(a + same + slower, control="a")
    d_same, d_slow = doc["differences"]["b"], doc["differences"]["c"]
    assert not d_same["e2e_ms_p50"]["significant"]
    assert d_slow["e2e_ms_p50"]["significant"] and d_slow["e2e_ms_p50"]["value"] > 0
    lo, hi = d_slow["e2e_ms_p50"]["ci"]
    true_diff = np.exp(6.9) - np.exp(6.5)  # the lognormal medians
    assert lo < true_diff < hi
    assert doc["differences"]["c"]["slo_attainment"]["value"] < 0
    assert doc["arms"]["a"]["total_cost"] == pytest.approx(0.4)


def test_ab_report_cli_and_bad_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "ab.jsonl"
    rng = np.random.default_rng(2)
    rows = _rows("a", rng.lognormal(6.5, 0.3, 50)) + _rows("b", rng.lognormal(7.5, 0.3, 50))
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["ab", "report", str(log), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "## `b` - `a`" in out and "| E2E p50 ms |" in out
    assert json.loads((tmp_path / "r.json").read_text())["differences"]["b"]["e2e_ms_p50"][
        "significant"
    ]
    log.write_text('{"arm": "a"}\n')
    assert main(["ab", "report", str(log)]) == 2
    assert "ab.jsonl:1: not an outcome line" in capsys.readouterr().err


# -- live: a real `sage-cp serve` process ------------------------------------------------------
RATE = 8.0  # requests per second offered (the window is time-scaled to it)
COUNT = 120
OUTPUT_CAP = 16  # output tokens clipped (a rule): keeps the live part short
# Engine steps stretched 10x (30x on the slow instance, an older GPU): a step then lasts tens
# of milliseconds, long against the event-loop lag of a loaded machine, so the wall-clock
# run keeps the fast/slow contrast the virtual clock has.
FAST, SLOW = 5.0, 20.0
SLOTS = 64


def _window() -> list[Any]:
    """`COUNT` requests from the middle of the Azure conversation trace (a rule, not a pick),
    time-scaled to `RATE`; prompts clipped to the simulator's context."""
    total = len(read_trace("azure_conv").records)
    recs = read_trace("azure_conv", start=total // 2, limit=COUNT).records
    k = mean_rate(recs) / RATE
    return [
        r.model_copy(
            update={"arrival_s": r.arrival_s * k, "input_tokens": min(r.input_tokens, 3000),
                    "output_tokens": min(r.output_tokens, OUTPUT_CAP), "request_id": f"r{i}"}
        )
        for i, r in enumerate(recs)
    ]  # fmt: skip


def _engines() -> list[SimInstanceConfig]:
    return [SimInstanceConfig(seed=0, time_scale=FAST), SimInstanceConfig(seed=1, time_scale=SLOW)]


async def _offer(url: str, records: list[Any]) -> list[int]:
    prompts = PromptBuilder(0)
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(i: int, r: Any) -> int:
            await asyncio.sleep(max(0.0, t0 + r.arrival_s - loop.time()))
            body = {
                "model": "sim-model",
                "prompt": prompts.build(r, i),
                "max_tokens": r.output_tokens,
            }
            resp = await client.post(
                "/v1/completions", json=body, headers={"x-request-id": r.request_id}
            )
            return resp.status_code

        return await asyncio.gather(*(one(i, r) for i, r in enumerate(records)))


def test_live_ab_of_two_routers_agrees_with_the_offline_replay(tmp_path: Path) -> None:
    """Split traffic 50/50 between round_robin and load_balanced on a fleet of one fast and
    one slow instance (~35 s). The live run is on the wall clock of a loaded machine, so the
    assertions are about what that load does not change: the ranking (load_balanced steers
    away from the slow instance, so its median TTFT, TPOT and E2E are lower) and that the live
    95 % interval of each median's difference contains the difference the same experiment
    shows offline (virtual clock, same requests, same arms). Tails (P90) are reported by the
    tool but not asserted: on a loaded machine they are what moves."""
    records = _window()
    log = tmp_path / "ab.jsonl"
    options = {"experiment": "routers", "sticky_by": "request", "arms": ARMS, "log": str(log)}

    async def live() -> list[int]:
        async with SimFleet(_engines()) as fleet:
            instances = [
                i.model_copy(update={"max_concurrent_requests": SLOTS}).model_dump(
                    mode="json", exclude_defaults=True
                )
                for i in sim_instances(fleet.members)
            ]
            cfg = {"scheduling_policy": "fifo", "routing_strategy": "experiment",
                   "router_options": options, "instances": instances}  # fmt: skip
            (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
            # In a thread: the simulators run on this loop and must answer health probes
            # while the gateway starts.
            gw = await asyncio.to_thread(
                start_gateway_process, "--config", str(tmp_path / "gw.yaml")
            )
            try:
                async with httpx.AsyncClient(base_url=gw.url) as c:
                    for _ in range(200):  # wait for the first health probes
                        if (await c.get("/health")).status_code == 200:
                            break
                        await asyncio.sleep(0.05)
                codes = await _offer(gw.url, records)
            finally:
                gw.proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(gw.proc.wait, 30)
            return codes

    codes = asyncio.run(live())
    assert codes == [200] * COUNT
    live_doc = ab_report(read_outcomes(log), control="rr")
    assert live_doc["arms"]["rr"]["requests"] + live_doc["arms"]["lb"]["requests"] == COUNT

    members = [MemberSpec(c, max_concurrent_requests=SLOTS) for c in _engines()]
    offline_rows = replay_experiment(
        records, members, {k: v for k, v in options.items() if k != "log"}
    )
    offline_doc = ab_report(offline_rows, control="rr")
    # Every request ran in the same arm live and offline (sticky by request id).
    live_arms = {r["request_id"]: r["arm"] for r in read_outcomes(log)}
    assert live_arms == {r["request_id"]: r["arm"] for r in offline_rows}
    for metric in ("ttft_ms_p50", "tpot_ms_p50", "e2e_ms_p50"):
        off = offline_doc["differences"]["lb"][metric]
        on = live_doc["differences"]["lb"][metric]
        assert off["value"] < 0 and on["value"] < 0, (metric, off, on)  # same ranking
        lo, hi = on["ci"]
        assert lo <= off["value"] <= hi, (metric, off, on)
    # The ranking is not a coin flip: a live difference is significant on its own (which
    # one varies with the machine's load; E2E medians are the noisiest, output lengths vary).
    live_diffs = live_doc["differences"]["lb"]
    assert any(live_diffs[m]["significant"] for m in ("ttft_ms_p50", "tpot_ms_p50", "e2e_ms_p50"))


# -- the gateway: arm tags, per-arm series, the admin API ------------------------------------
async def test_gateway_tags_arms_and_admin_changes_and_stops_them(tmp_path: Path) -> None:
    from tests.test_gateway_support import gateway_over_sim, gen

    log = tmp_path / "ab.jsonl"
    options = {"experiment": "e", "sticky_by": "user", "arms": ARMS, "log": str(log)}
    admin = {"authorization": "Bearer adm"}
    body = {"model": "sim-model", "prompt": "hello there", "max_tokens": 3}
    async with gateway_over_sim(
        gen(2, time_scale=0.05),
        settings={"admin_key": "adm"},
        routing_strategy="experiment",
        router_options=options,
        request_log={"path": str(tmp_path / "requests")},
        instance_fields={"price_per_1k_tokens": 1.0},
    ) as h:
        async with h.client() as c:
            users = [f"u{i}" for i in range(24)]
            for u in users:
                r = await c.post("/v1/completions", json=body, headers={"x-sage-user": u})
                assert r.status_code == 200
            metrics = (await c.get("/metrics")).text
            assert 'sage_cp_ab_requests_total{arm="rr",outcome="completed"}' in metrics
            assert 'sage_cp_ab_requests_total{arm="lb",outcome="completed"}' in metrics
            assert 'sage_cp_cost_by_tag_total{tag="arm=rr"}' in metrics
            assert 'sage_cp_cost_by_model_total{model="sim-model"}' in metrics
            exp = (await c.get("/admin/experiment", headers=admin)).json()
            assert [a["name"] for a in exp["arms"]] == ["rr", "lb"]
            assert set(exp["cost_by_arm"]) == {"rr", "lb"}
            r = await c.put("/admin/experiment/arms/lb", json={"share": -1}, headers=admin)
            assert r.status_code == 400
            r = await c.put("/admin/experiment/arms/nope", json={"share": 1}, headers=admin)
            assert r.status_code == 404
            r = await c.put(
                "/admin/experiment/arms/lb", json={"router": "least_loaded_typo"}, headers=admin
            )
            assert r.status_code == 400 and "least_loaded_typo" in r.text
            r = await c.post("/admin/experiment/arms/lb/stop", headers=admin)
            assert r.status_code == 200
            assert [a["share"] for a in r.json()["arms"]] == [1.0, 0.0]
            for u in users:  # the same users again: all in rr now
                await c.post("/v1/completions", json=body, headers={"x-sage-user": u})
    rows = read_outcomes(log)  # closed and flushed when the gateway stopped
    assert len(rows) == 48
    first, second = rows[:24], rows[24:]
    assert {r["arm"] for r in first} == {"rr", "lb"} and {r["arm"] for r in second} == {"rr"}
    assert all(r["experiment"] == "e" and r["state"] == "completed" for r in rows)
    # The coordinator's request log (recording/) carries the arm too; the report reads it.
    from_request_log = read_outcomes(tmp_path / "requests")
    assert sorted((r["request_id"], r["arm"]) for r in from_request_log) == sorted(
        (r["request_id"], r["arm"]) for r in rows
    )
    assert set(ab_report(from_request_log)["arms"]) == {"rr", "lb"}
