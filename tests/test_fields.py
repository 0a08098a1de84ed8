"""Every public field of RequestMetadata, ExecutionInstance and the configs changes behaviour
or is refused, and every metric means what its name says.

Runs the real coordinator against in-process simulators on the virtual clock
(`sage_cp_plugin.virtual`): the same HTTP code path, deterministic time, no sleeps on the wall
clock. No GPU exists here, so the simulator stands in for vLLM.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from sage_cp_plugin import (
    ConfigurationError,
    ControlPlaneConfig,
    ControlPlaneManager,
    DecodingConfig,
    ExecutionInstance,
    ExecutionInstanceType,
    ParallelismType,
    PrefillingConfig,
    RequestMetadata,
    RequestRejectedError,
    RequestStatus,
    RequestTimeoutError,
)
from sage_cp_plugin.options import ControlPlaneOptions
from sage_cp_plugin.pools import InstancePools
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.sim.config import FaultConfig
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from tests.helpers import fleet as fleet_of
from tests.helpers import item, state

T = TypeVar("T")
Body = Callable[[ControlPlaneManager, InProcessFleet], Awaitable[T]]


def on_virtual_fleet(members: list[MemberSpec], body: Body[T], **manager_kwargs: Any) -> T:
    """Run `body(manager, fleet)` against started in-process simulators, on virtual time."""

    async def main() -> T:
        fleet = InProcessFleet(members)
        manager_kwargs.setdefault("scheduling_policy", "fifo")
        manager_kwargs.setdefault("enable_monitoring", False)
        m = ControlPlaneManager(transport_factory=fleet.transport_factory, **manager_kwargs)
        for inst in fleet.instances:
            m.register_instance(inst)
        await m.start()
        try:
            return await body(m, fleet)
        finally:
            await m.stop()
            await fleet.aclose()

    return run_virtual(main())


def sims(n: int, *, cap: int = 8, **extra: Any) -> list[MemberSpec]:
    return [
        MemberSpec(SimInstanceConfig(seed=i), max_concurrent_requests=cap, extra=dict(extra))
        for i in range(n)
    ]


def req(**fields: Any) -> RequestMetadata:
    fields.setdefault("prompt", "tell me a story about the sea")
    fields.setdefault("max_tokens", 16)
    return RequestMetadata(**fields)


# -- RequestMetadata ---------------------------------------------------------------------------
def test_preferred_instance_is_used_when_healthy_and_routed_around_when_drained() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        done = [await m.generate(request=req(preferred_instance_id="sim-2")) for _ in range(4)]
        assert {r.instance_id for r in done} == {"sim-2"}
        m.drain_instance("sim-2")
        moved = await m.generate(request=req(preferred_instance_id="sim-2"))
        assert moved.state == "completed" and moved.instance_id != "sim-2"
        with pytest.raises(RequestRejectedError, match="'nope' is not registered"):
            await m.submit_request(req(preferred_instance_id="nope"))

    on_virtual_fleet(sims(3), body, routing_strategy="round_robin")


def test_parallelism_hint_prefers_instances_with_that_layout() -> None:
    members = [
        MemberSpec(SimInstanceConfig(seed=0)),
        MemberSpec(SimInstanceConfig(seed=1), extra={"pipeline_parallel_size": 2, "gpu_count": 2}),
        MemberSpec(SimInstanceConfig(seed=2)),
    ]

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        hinted = [
            await m.generate(request=req(parallelism_hint=ParallelismType.PIPELINE_PARALLEL))
            for _ in range(3)
        ]
        assert {r.instance_id for r in hinted} == {"sim-1"}
        d = hinted[0].decision
        assert d is not None and d.parallelism_strategy == ParallelismType.PIPELINE_PARALLEL
        plain = [await m.generate(request=req()) for _ in range(3)]
        assert {r.instance_id for r in plain} == {"sim-0", "sim-1", "sim-2"}  # no hint: all

    on_virtual_fleet(members, body, routing_strategy="round_robin")


def test_billing_tier_selects_the_price_and_unknown_tiers_are_refused() -> None:
    prices = {"price_per_1k_tokens": 2.0, "prices_by_tier": {"batch": 0.5}}

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        std = await m.generate(request=req())
        batch = await m.generate(request=req(billing_tier="batch"))
        for r, per_1k in ((std, 2.0), (batch, 0.5)):
            tokens = r.prompt_tokens + r.completion_tokens
            assert r.cost == pytest.approx(per_1k * tokens / 1000)
            assert r.decision is not None and r.decision.estimated_cost > 0  # a prediction
        assert m.get_metrics().total_cost == pytest.approx((std.cost or 0) + (batch.cost or 0))
        with pytest.raises(RequestRejectedError, match=r"billing_tier 'gold'.*'batch'"):
            await m.submit_request(req(billing_tier="gold"))

    on_virtual_fleet(sims(1, **prices), body)


def test_gpu_hour_prices_charge_each_request_its_share_of_busy_time() -> None:
    # 3600 per GPU-hour on 2 GPUs = 2 per second of the instance's time.
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        t0 = asyncio.get_running_loop().time()
        ids = [await m.submit_request(req(max_tokens=8 + 8 * i)) for i in range(3)]
        results = [await m.wait(i) for i in ids]
        busy_s = asyncio.get_running_loop().time() - t0
        costs = [r.cost for r in results]
        assert all(c is not None and c > 0 for c in costs)
        # Concurrent requests split the time: together they pay for the busy time once.
        assert sum(c or 0 for c in costs) == pytest.approx(2.0 * busy_s, rel=1e-6)
        assert m.get_metrics().total_cost == pytest.approx(sum(c or 0 for c in costs))

    on_virtual_fleet(sims(1, price_per_gpu_hour=3600.0, gpu_count=2), body)


def test_tags_reach_the_result_and_bounded_per_tag_metrics() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        r = await m.generate(request=req(tags={"team": "search"}, ttft_slo_ms=60_000))
        assert r.tags == {"team": "search"}
        for team in ("ads", "maps", "mail"):
            await m.generate(request=req(tags={"team": team}))
        by_tag = m.get_metrics().requests_by_tag
        assert by_tag["team=search"] == {
            "completed": 1,
            "failed": 0,
            "slo_met": 1,
            "slo_total": 1,
        }
        # max_tag_series=2: the third and fourth distinct series are counted as "other".
        assert set(by_tag) == {"team=search", "team=ads", "other"}
        assert by_tag["other"]["completed"] == 2

    on_virtual_fleet(sims(1), body, max_tag_series=2)


def test_request_states_pending_queued_scheduled_running_completed() -> None:
    async def main() -> list[str]:
        fleet = InProcessFleet(sims(1, cap=1))
        m = ControlPlaneManager(
            transport_factory=fleet.transport_factory,
            scheduling_policy="fifo",
            enable_monitoring=False,
        )
        m.register_instance(fleet.instances[0])
        first = await m.submit_request(req(prompt="word " * 400, max_tokens=64))
        second = await m.submit_request(req())
        seen = [(await m.get_request_status(first)).state.value]  # not started: pending
        await m.start()
        try:
            while True:
                s1 = (await m.get_request_status(first)).state
                s2 = (await m.get_request_status(second)).state
                seen.append(s1.value)
                if s1 in (RequestStatus.SCHEDULED, RequestStatus.RUNNING):
                    assert s2 == RequestStatus.QUEUED  # one slot: it waits in the queue
                if s1.is_terminal:
                    break
                await asyncio.sleep(0.002)  # virtual time
            await m.wait(second)
        finally:
            await m.stop()
            await fleet.aclose()
        return seen

    seen = run_virtual(main())
    order = list(dict.fromkeys(seen))
    # Started: queued until the dispatcher's first round sends it out.
    assert order == ["pending", "queued", "scheduled", "running", "completed"]


def test_prefill_ms_is_dispatch_to_first_token() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        r = await m.generate(request=req(prompt="word " * 300))
        t = r.timings
        assert t.prefill_ms is not None and t.ttft_ms is not None and t.queue_ms is not None
        assert t.prefill_ms > 0
        assert t.prefill_ms == pytest.approx(t.ttft_ms - t.queue_ms)

    on_virtual_fleet(sims(1), body)


def test_timeouts_raise_request_timeout_error() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        rid = await m.submit_request(req())
        with pytest.raises(RequestTimeoutError, match="did not finish within"):
            await m.wait(rid, timeout=1.0)
        # request_timeout_s bounds a running request too: it fails as a timeout.
        res = await m.wait(rid)
        assert res.state == RequestStatus.FAILED and res.error_type == "timeout"
        with pytest.raises(RequestTimeoutError):
            async for _ in m.stream(request=req()):
                pass

    members = [MemberSpec(SimInstanceConfig(seed=0, faults=FaultConfig(hang=True)))]
    on_virtual_fleet(members, body, request_timeout_s=5.0)


# -- metrics -----------------------------------------------------------------------------------
def test_failovers_count_moves_off_a_failed_instance_retries_count_every_retry() -> None:
    members = [
        MemberSpec(SimInstanceConfig(seed=0, faults=FaultConfig(error_rate=1.0))),
        MemberSpec(SimInstanceConfig(seed=1)),
    ]

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        r = await m.generate(request=req(preferred_instance_id="sim-0"))
        assert r.state == "completed" and r.instance_id == "sim-1" and r.attempts == 2
        met = m.get_metrics()
        assert (met.retries, met.failovers) == (1, 1)

    on_virtual_fleet(members, body)

    async def same_instance(m: ControlPlaneManager, _: InProcessFleet) -> None:
        r = await m.generate(request=req())
        assert r.state == "failed" and r.attempts == 3
        met = m.get_metrics()
        assert (met.retries, met.failovers) == (2, 0)  # nowhere else to go

    on_virtual_fleet(members[:1], same_instance, max_attempts=3)


def test_slot_occupancy_is_measured_and_gpu_utilization_is_not_invented() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        ids = [await m.submit_request(req(max_tokens=64)) for _ in range(3)]
        await asyncio.sleep(0.001)  # virtual: the dispatcher has run
        met = m.get_metrics()
        assert met.slot_occupancy == pytest.approx(3 / 8)
        assert met.gpu_utilization is None  # vLLM's /metrics reports none
        assert met.kv_cache_usage is None  # monitoring is off: nothing scraped
        for i in ids:
            await m.wait(i)

    on_virtual_fleet(sims(1, cap=8), body)


# -- ExecutionInstance and the prefill/decode configs -----------------------------------------
def test_prefill_and_decode_configs_limit_the_slots() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        ids = [await m.submit_request(req(max_tokens=64)) for _ in range(6)]
        await asyncio.sleep(0.001)  # virtual: the dispatcher has run
        in_flight = {s.instance_id: s.in_flight for s in m.fleet}
        assert in_flight == {"sim-0": 2, "sim-1": 3}  # max_concurrent_requests is 8
        assert len(m.queue) == 1
        for i in ids:
            await m.wait(i)

    members = [
        MemberSpec(
            SimInstanceConfig(seed=0),
            max_concurrent_requests=8,
            extra={"prefilling_config": PrefillingConfig(target_batch_size=2)},
        ),
        MemberSpec(
            SimInstanceConfig(seed=1),
            max_concurrent_requests=8,
            extra={"decoding_config": DecodingConfig(max_parallel_requests=3)},
        ),
    ]
    on_virtual_fleet(members, body)


def test_without_chunked_prefill_longer_prompts_go_elsewhere_or_fail_with_the_reason() -> None:
    no_chunking = {
        "prefilling_config": PrefillingConfig(
            enable_chunked_prefill=False, max_chunk_size_tokens=32
        )
    }
    long_prompt = "word " * 400  # ~500 tokens by the control plane's estimate

    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        longs = [await m.generate(request=req(prompt=long_prompt)) for _ in range(3)]
        assert {r.instance_id for r in longs} == {"sim-1"}
        shorts = [await m.generate(request=req(prompt="hi")) for _ in range(4)]
        assert {r.instance_id for r in shorts} == {"sim-0", "sim-1"}

    members = [
        MemberSpec(SimInstanceConfig(seed=0), extra=no_chunking),
        MemberSpec(SimInstanceConfig(seed=1)),
    ]
    on_virtual_fleet(members, body, routing_strategy="round_robin")

    async def alone(m: ControlPlaneManager, _: InProcessFleet) -> None:
        r = await m.generate(request=req(prompt=long_prompt))
        assert r.state == "failed" and r.error_type == "no_instance"
        assert "without chunked prefill" in (r.error or "")

    on_virtual_fleet(members[:1], alone)


def test_decode_target_latency_stops_new_work_while_too_slow_per_token() -> None:
    slow = state("d", cap=10, decoding_config=DecodingConfig(target_latency_ms=20))
    pools = InstancePools(fleet_of(slow))
    it = item(1)
    assert pools.has_room(slow, it)  # nothing measured yet
    slow.decode_s_per_token.add(0.050)  # 50 ms per token measured
    slow.in_flight = 1
    assert not pools.has_room(slow, it)
    slow.in_flight = 0
    assert pools.has_room(slow, it)  # idle: it may take work and be measured again
    slow.decode_s_per_token.value = 0.010
    slow.in_flight = 5
    assert pools.has_room(slow, it)


def test_instance_descriptions_are_validated() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ExecutionInstance(instance_id="a", gpus=4)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="tensor_parallel_size=8 differs"):
        ExecutionInstance(
            instance_id="a", prefilling_config=PrefillingConfig(tensor_parallel_size=8)
        )
    with pytest.raises(ValueError, match="decoding_config does not apply to a prefilling"):
        ExecutionInstance(
            instance_id="a",
            instance_type=ExecutionInstanceType.PREFILLING,
            decoding_config=DecodingConfig(),
        )
    ok = ExecutionInstance(
        instance_id="a",
        tensor_parallel_size=8,
        prefilling_config=PrefillingConfig(tensor_parallel_size=8, target_batch_size=4),
    )
    assert ok.slot_limit == 4


def test_a_copy_with_new_fields_recomputes_the_derived_limits() -> None:
    # The limits are cached on first read; pydantic's model_copy copies that cache and sets
    # `update` without __setattr__, so a copy used to keep the original's limits.
    inst = ExecutionInstance(instance_id="a", max_concurrent_requests=8,
                             metadata={"kv_capacity_tokens": 100})  # fmt: skip
    assert (inst.slot_limit, inst.kv_capacity_hint) == (8, 100.0)
    copy = inst.model_copy(
        update={"max_concurrent_requests": 2, "metadata": {"kv_capacity_tokens": 5}}
    )
    assert (copy.slot_limit, copy.kv_capacity_hint) == (2, 5.0)
    assert (inst.slot_limit, inst.kv_capacity_hint) == (8, 100.0)


def test_status_flags_given_at_registration_are_honoured() -> None:
    async def body(m: ControlPlaneManager, _: InProcessFleet) -> None:
        served = [await m.generate(request=req()) for _ in range(4)]
        assert {r.instance_id for r in served} == {"sim-1"}

    members = [
        MemberSpec(SimInstanceConfig(seed=0), extra={"is_available": False}),
        MemberSpec(SimInstanceConfig(seed=1)),
        MemberSpec(SimInstanceConfig(seed=2), extra={"is_healthy": False}),
    ]
    on_virtual_fleet(members, body, routing_strategy="round_robin")


# -- one options model -------------------------------------------------------------------------
def test_config_and_manager_share_every_option_and_its_default() -> None:
    assert set(ControlPlaneOptions.model_fields) <= set(ControlPlaneConfig.model_fields)
    params = inspect.signature(ControlPlaneManager.__init__).parameters
    for name in ("scheduling_policy", "routing_strategy", "enable_pd_separation"):
        assert params[name].default == ControlPlaneOptions.model_fields[name].default, name
    assert ControlPlaneConfig().enable_pd_separation == ControlPlaneManager().enable_pd_separation

    cfg = ControlPlaneConfig.load(
        {
            "urgent_headroom": 0.5,
            "urgent_ttft_ms": 250,
            "scrape": {"interval_s": 0.25, "stale_after_s": 2},
            "health": {"jitter": 0.05},
            "result_retention": 7,
            "max_tag_series": 3,
        }
    )
    m = cfg.build_manager()
    assert m.pools.urgent_headroom == 0.5 and m.admission.urgent_ttft_ms == 250
    assert m.scraper.config.interval_s == 0.25 and m.scraper.config.stale_after_s == 2
    assert m.health.config.jitter == 0.05
    assert m.results.retention == 7 and m.metrics.max_tag_series == 3
    assert cfg.build_manager(result_retention=9).results.retention == 9  # overrides


def test_bad_options_name_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="urgent_headroom"):
        ControlPlaneManager(urgent_headroom=-1)
    with pytest.raises(ConfigurationError, match="bogus: Extra inputs are not permitted"):
        ControlPlaneManager(bogus=1)
    with pytest.raises(ConfigurationError, match="unknown actuator 'bogus'"):
        ControlPlaneManager(enable_auto_scaling=True, autoscaling={"actuator": "bogus"})
    with pytest.raises(ConfigurationError, match=r"scrape\.interval_s"):
        ControlPlaneConfig.load({"scrape": {"interval_s": 0}})
