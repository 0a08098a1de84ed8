"""The control plane drives vLLM's real disaggregated prefill (NixlConnector) end to end."""

from __future__ import annotations

import pytest
from vllm_fleet import metric_sum, scrape, unique_prompt

from sage_cp_plugin import ControlPlaneManager, ExecutionCoordinator, PDSeparationConfig

from .conftest import PdPair
from .test_control_plane_e2e import instance

pytestmark = pytest.mark.e2e

XFER_COUNT = "vllm:nixl_xfer_time_seconds_count"


async def test_control_plane_two_step_moves_kv_by_transfer(
    vllm_pd_pair: PdPair, tiny_model_name: str
) -> None:
    m = ControlPlaneManager(
        scheduling_policy="fifo",
        enable_pd_separation=True,
        pd_config=PDSeparationConfig(
            enabled=True, disaggregated=True, disaggregation_trigger="always"
        ),
        executor=ExecutionCoordinator(timeout_s=300),
    )
    m.register_instance(
        instance("prefill", vllm_pd_pair.prefill_url, tiny_model_name, instance_type="prefilling")
    )
    m.register_instance(
        instance("decode", vllm_pd_pair.decode_url, tiny_model_name, instance_type="decoding")
    )
    await m.start()
    try:
        before = metric_sum(scrape(vllm_pd_pair.decode_url), XFER_COUNT)
        for _ in range(2):
            res = await m.generate(unique_prompt(words=200), max_tokens=4, temperature=0)
            assert res.state == "completed", res.error
            assert res.instance_id == "decode"
            assert res.decision is not None and res.decision.metadata.get("prefill_used") is True
        after = metric_sum(scrape(vllm_pd_pair.decode_url), XFER_COUNT)
        assert after - before == 2  # one NIXL transfer per request: the KV was not recomputed
        # Streaming through the two-step path relays the decode instance's chunks.
        chunks = [c async for c in m.stream(unique_prompt(words=200), max_tokens=4, temperature=0)]
        assert [c for c in chunks if c.get("choices")]
        assert metric_sum(scrape(vllm_pd_pair.decode_url), XFER_COUNT) - after == 1
    finally:
        await m.stop()
