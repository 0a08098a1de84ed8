"""Active health checks with thresholds, passive outlier ejection, metrics scraping."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sage_cp_plugin import RequestMetadata
from sage_cp_plugin.health import HealthConfig
from sage_cp_plugin.scrape import MetricsParseError, ScrapeConfig, parse_vllm_metrics
from sage_cp_plugin.sim import SimFleet
from tests.helpers import wait_until
from tests.simfleet import gen, managed_fleet


async def faults(fleet: SimFleet, i: int, **f: object) -> None:
    async with httpx.AsyncClient() as c:
        (await c.post(f"{fleet[i].url}/sim/faults", json=f)).raise_for_status()


async def test_probe_thresholds_mark_unhealthy_and_healthy_again() -> None:
    cfg = HealthConfig(interval_s=0.05, jitter=0.1, unhealthy_threshold=3, healthy_threshold=2)
    async with managed_fleet(gen(2), health=cfg) as (m, fleet):
        s1 = m.fleet.get("sim-1")
        assert s1 is not None
        await faults(fleet, 1, health_status=503)
        await wait_until(lambda: not s1.healthy, "sim-1 marked unhealthy")
        h = m.health.health["sim-1"]
        assert h.transitions[-1][1] == "unhealthy"
        placed = [(await m.generate("q", max_tokens=2)).instance_id for _ in range(5)]
        assert placed == ["sim-0"] * 5
        await faults(fleet, 1)
        await wait_until(lambda: s1.healthy, "sim-1 healthy again")
        assert h.probe_successes >= 2


async def test_consecutive_failures_open_the_circuit_then_half_open_probe_closes_it() -> None:
    # A cooldown no run outlasts, so the open phase holds however slow the machine is; it is
    # then ended by hand (the monitor reads its config on every decision).
    cfg = HealthConfig(interval_s=3600, failure_threshold=3, cooldown_s=3600)
    async with managed_fleet(
        gen(2), routing_strategy="round_robin", health=cfg, max_attempts=5, retry_backoff_s=0.001
    ) as (m, fleet):
        s0 = m.fleet.get("sim-0")
        assert s0 is not None
        await faults(fleet, 0, error_rate=1.0)
        for i in range(8):
            assert (await m.generate(f"q{i}", max_tokens=2)).state == "completed"
        assert s0.circuit_open
        assert [t[1] for t in m.health.health["sim-0"].transitions] == ["circuit open"]
        sent_while_open = [(await m.generate("x", max_tokens=2)).instance_id for _ in range(4)]
        assert set(sent_while_open) == {"sim-1"}
        await faults(fleet, 0)
        cfg.cooldown_s = 0.0  # cooldown over: the next round lets one trial through
        results = [await m.generate(f"t{i}", max_tokens=2) for i in range(4)]
        assert "sim-0" in {r.instance_id for r in results}
        assert not s0.circuit_open
        assert [t[1] for t in m.health.health["sim-0"].transitions][-2:] == [
            "half-open",
            "circuit closed",
        ]


def test_parser_reads_current_and_old_vllm_names() -> None:
    current = (
        '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine="0",model_name="m"} 3\n'
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine="0",model_name="m"} 2\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 5\n'
        '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
        '# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{engine="0",model_name="m"} 128\n'
    )
    v = parse_vllm_metrics(current)
    assert v == {"running": 3, "waiting": 7, "kv_usage": 0.25, "prefix_cache_hits": 128}
    old = '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
    assert parse_vllm_metrics(old) == {"kv_usage": 0.5}
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics("<html>502 Bad Gateway</html>")
    with pytest.raises(MetricsParseError, match="no vLLM load metrics"):
        parse_vllm_metrics("# TYPE other gauge\nother 1\n")


async def test_scrape_feeds_kv_aware_and_stale_or_garbage_data_is_not_trusted() -> None:
    async with managed_fleet(
        gen(2, time_scale=1.0),
        routing_strategy="kv_aware",
        # A scraped reading fades out over two intervals: at 0.05 s a busy machine let it
        # fade between the picks below (a wall-clock race); at 1 s it stays while they run.
        scrape=ScrapeConfig(interval_s=1.0, stale_after_s=3.0),
    ) as (m, fleet):
        s0, s1 = m.fleet.get("sim-0"), m.fleet.get("sim-1")
        assert s0 is not None and s1 is not None
        # Load sim-0 behind the control plane's back: only its /metrics shows it.
        async with httpx.AsyncClient(timeout=30) as c:
            hidden = [
                asyncio.create_task(
                    c.post(
                        f"{fleet[0].url}/v1/completions",
                        json={"model": "sim-model", "prompt": "load " * 200, "max_tokens": 300},
                    )
                )
                for _ in range(6)
            ]
            await wait_until(
                lambda: s0.scraped.fresh and s0.scraped.running >= 6, "a fresh scrape of 6 running"
            )
            assert s0.scraped.kv_usage > s1.scraped.kv_usage
            picks = {(await m.generate("q", max_tokens=1)).instance_id for _ in range(5)}
            assert picks == {"sim-1"}
            # Garbage from /metrics: the old reading goes stale and is not used.
            await faults(fleet, 0, metrics_garbage=True)
            await wait_until(lambda: not s0.scraped.fresh, "the reading to go stale")
            assert "sim-0" in m.scraper.failures
            for t in hidden:
                t.cancel()
        await asyncio.gather(*hidden, return_exceptions=True)
        assert await m.submit_request(RequestMetadata(prompt="x", max_tokens=1))


def test_probe_jitter_is_the_same_in_every_run() -> None:
    """Replays on the virtual clock must reproduce themselves: the probes' random jitter
    interleaves with the replayed requests, and when it was unseeded, events at equal virtual
    times reordered from run to run (a replay's P90 TTFT moved by 10 %)."""
    from sage_cp_plugin.health import HealthMonitor
    from sage_cp_plugin.state import InstanceState
    from sage_cp_plugin.types import ExecutionInstance
    from sage_cp_plugin.virtual.clock import run_virtual

    states = [
        InstanceState(ExecutionInstance(instance_id=f"i{k}", host="127.0.0.1", port=9))
        for k in range(4)
    ]

    async def probe_times() -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []

        async def probe(iid: str) -> bool:
            seen.append((iid, asyncio.get_running_loop().time()))
            return True

        monitor = HealthMonitor(HealthConfig(interval_s=1.0, jitter=0.5), probe, lambda: None)
        for _ in range(3):
            await monitor.probe_all(states)
        return seen

    first, second = run_virtual(probe_times()), run_virtual(probe_times())
    assert len({t for _, t in first}) == len(first)  # jittered: no two probes at once
    assert first == second
