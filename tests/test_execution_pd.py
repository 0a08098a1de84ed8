"""vLLM's two-step disaggregated prefill, driven by the control plane, against simulated
prefill and decode instances that honour `kv_transfer_params`."""

from __future__ import annotations

import httpx

from sage_cp_plugin import PDSeparationConfig
from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
from sage_cp_plugin.virtual.runner import CoordinatorConfig, RunResult, run_replay
from sage_cp_plugin.workloads import WorkloadRecord
from tests.simfleet import managed_fleet


def pd_fleet(time_scale: float = 0.05) -> list[SimInstanceConfig]:
    return [
        SimInstanceConfig(role="prefill", time_scale=time_scale, seed=0),
        SimInstanceConfig(role="decode", time_scale=time_scale, seed=1),
    ]


def pd(trigger: str = "always", threshold: int = 800) -> dict[str, object]:
    return {
        "enable_pd_separation": True,
        "pd_config": PDSeparationConfig(
            enabled=True,
            disaggregated=True,
            disaggregation_trigger=trigger,
            prefilling_threshold_input_tokens=threshold,
        ),
    }


async def test_two_step_protocol_moves_the_prompt_kv_to_the_decode_instance() -> None:
    async with managed_fleet(pd_fleet(), **pd()) as (m, fleet):
        prompt = " ".join(f"w{i}" for i in range(600))
        res = await m.generate(prompt, max_tokens=16)
        assert res.state == "completed" and res.completion_tokens == 16
        assert res.instance_id == "sim-1"
        assert res.decision is not None
        assert res.decision.metadata == {"prefill_instance_id": "sim-0", "prefill_used": True}
        pre = fleet[0].sim.engine.state()["counters"]
        dec = fleet[1].sim.engine.state()["counters"]
        assert pre["generation_tokens"] == 1  # step 1 ran with max_tokens=1
        assert dec["kv_transfers"] == 1
        assert dec["external_prompt_tokens"] == 600  # the prompt's KV arrived by transfer...
        assert dec["prompt_tokens_computed"] < 600  # ...instead of being computed
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"{fleet[1].url}/metrics")).text
        assert "vllm:nixl_xfer_time_seconds_count" in text
        # TTFT covers both steps: it cannot be shorter than the prefill step alone.
        assert res.timings.ttft_ms is not None and res.timings.ttft_ms > 0


async def test_streamed_disaggregated_request_relays_decode_chunks() -> None:
    async with managed_fleet(pd_fleet(), **pd()) as (m, fleet):
        chunks = [c async for c in m.stream("stream " * 300, max_tokens=8)]
        assert len([c for c in chunks if c.get("choices")]) == 8
        assert fleet[1].sim.engine.state()["counters"]["kv_transfers"] == 1


async def test_threshold_trigger_keeps_short_prompts_on_one_instance() -> None:
    async with managed_fleet(pd_fleet(), **pd("threshold", threshold=200)) as (m, fleet):
        short = await m.generate("just a few words", max_tokens=4)
        assert short.decision is not None and "prefill_instance_id" not in short.decision.metadata
        long = await m.generate(" ".join(f"t{i}" for i in range(2000)), max_tokens=4)
        assert long.decision is not None and long.decision.metadata.get("prefill_used") is True
        assert fleet[1].sim.engine.state()["counters"]["kv_transfers"] == 1


async def test_failed_prefill_falls_back_to_whole_request_without_hanging() -> None:
    async with managed_fleet(pd_fleet(), **pd()) as (m, fleet):
        async with httpx.AsyncClient() as c:
            (
                await c.post(f"{fleet[0].url}/sim/faults", json={"error_rate": 1.0})
            ).raise_for_status()
        res = await m.generate("fallback " * 300, max_tokens=4)
        assert res.state == "completed" and res.instance_id == "sim-1"
        assert res.decision is not None and res.decision.metadata["prefill_used"] is False
        dec = fleet[1].sim.engine.state()["counters"]
        assert dec["kv_transfers"] == 0 and dec["prompt_tokens_computed"] >= 300
        assert m.disaggregator.prefill_failures == 1


async def test_predicted_trigger_splits_long_prompts_and_runs_short_ones_whole() -> None:
    predicted = {
        "enable_pd_separation": True,
        "pd_config": PDSeparationConfig(
            routing_policy="none", disaggregated=True, disaggregation_trigger="predicted"
        ),
    }
    async with managed_fleet(pd_fleet(), **predicted) as (m, fleet):
        # Idle fleet, 3000 uncached tokens (~300 ms at the prior 0.1 ms/token, more than a
        # 20 ms decode step): the split pays.
        long = await m.generate(" ".join(f"w{i}" for i in range(3000)), max_tokens=4)
        assert long.decision is not None
        assert long.decision.metadata.get("prefill_used") is True
        assert fleet[1].sim.engine.state()["counters"]["kv_transfers"] == 1
        # A 5-token prompt prefills within a step: it runs whole, on either instance.
        short = await m.generate("short " * 5, max_tokens=4)
        assert short.decision is not None
        assert "prefill_used" not in short.decision.metadata
        assert fleet[1].sim.engine.state()["counters"]["kv_transfers"] == 1


def replay_on_prefill_and_decode(
    work: list[WorkloadRecord], adaptive_concurrency: bool = False
) -> RunResult:
    """`work` replayed on the virtual clock on one prefill and one decode instance (64 slots
    each), split per request by the `predicted` trigger; every request completes."""
    roles = ["prefill", "decode"]
    fleet = InProcessFleet(
        [MemberSpec(SimInstanceConfig(role=r, seed=i), 64) for i, r in enumerate(roles)]
    )
    config = CoordinatorConfig(
        enable_pd_separation=True,
        pd_config=PDSeparationConfig(
            routing_policy="none", disaggregated=True, disaggregation_trigger="predicted"
        ),
        extra={"adaptive_concurrency": adaptive_concurrency},
    )
    res = run_replay(work, fleet, config)
    assert all(o.state == "completed" for o in res.outcomes)
    return res


def test_burst_of_long_prompts_is_not_queued_behind_one_prefill_instance() -> None:
    """On the virtual clock: eight 4,000-token prompts arrive at once on one prefill and one
    decode instance (predicted trigger, objectives TTFT 10 s / TPOT 100 ms). Holding every
    request that runs whole off the decode instance while the prefill instance merely has
    room queued them there one behind the other (the decode instance idle, the last first
    token after all eight prefills). A request is kept off the decode instance only when the
    prefill side costs it no more waiting than its prefill would cost the decodes there, so
    the two instances share the burst: it ends sooner than eight prefills in a row."""
    prompt, n = 4000, 8
    burst = [
        WorkloadRecord(
            arrival_s=0.0,
            input_tokens=prompt,
            output_tokens=20,
            ttft_slo_ms=10_000,
            tpot_slo_ms=100,
        )
        for _ in range(n)
    ]
    res = replay_on_prefill_and_decode(burst)
    serial_ms = n * prompt * SimInstanceConfig().b1_us_per_token / 1000
    assert max(o.ttft_ms or 0.0 for o in res.outcomes) < serial_ms
    # The TPOT objective holds for every request, split or whole.
    assert all((o.tpot_ms or 0.0) <= 100 for o in res.outcomes)


def test_whole_requests_wait_for_a_decode_instance_rather_than_queue_behind_long_prefills() -> None:
    """On the virtual clock, one prefill and one decode instance with the adaptive
    concurrency limit (predicted trigger, objectives TTFT 1 s / TPOT 100 ms): for 2 s, a
    6,000-token prompt every 50 ms and a 100-token one every 10 ms, all with 10-token
    answers. The decode instance's prefill gate closes whenever a long prompt is queued on it,
    while the prefill instance, which has decoded nothing yet, has no step time to gate by.
    Sending every short request that finds the decode instance closed to the prefill
    instance queued it behind long prefills, where it decoded at a full chunk a step (187 of
    240 met their objectives; 164 of the 200 short ones). A request runs whole only where
    the load model predicts it meets its objectives, else waits for the decode instance
    whose gate opens as its queue drains (229 and 195)."""

    def stream(tokens: int, every_s: float, start_s: float) -> list[WorkloadRecord]:
        n = int(2.0 / every_s)
        return [
            WorkloadRecord(
                arrival_s=start_s + i * every_s,
                input_tokens=tokens,
                output_tokens=10,
                ttft_slo_ms=1000,
                tpot_slo_ms=100,
            )
            for i in range(n)
        ]

    work = sorted(stream(6000, 0.05, 0.0) + stream(100, 0.01, 0.001), key=lambda r: r.arrival_s)
    res = replay_on_prefill_and_decode(work, adaptive_concurrency=True)
    short = [o for o in res.outcomes if o.input_tokens == 100]
    assert sum(bool(o.slo_met) for o in res.outcomes) >= 0.9 * len(res.outcomes)
    assert sum(bool(o.slo_met) for o in short) >= 0.95 * len(short)
