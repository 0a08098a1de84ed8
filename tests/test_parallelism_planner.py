"""Behaviour of the roofline planner a user relies on."""

from __future__ import annotations

import json

import pytest

from sage_cp_plugin.parallelism import (
    FleetEstimator,
    InstanceShape,
    Layout,
    Objective,
    PlanRequest,
    Pool,
    Role,
    RooflinePlanner,
    get_gpu_spec,
    get_model_spec,
    load_workload,
    memory_fit,
)
from sage_cp_plugin.types import ExecutionInstanceType


def plan(**kw: object):  # type: ignore[no-untyped-def]
    return RooflinePlanner().plan(PlanRequest.build(top_k=50, **kw))  # type: ignore[arg-type]


def general(tp: int, pp: int, replicas: int) -> Layout:
    return Layout(
        pools=(Pool(role=Role.GENERAL, shape=InstanceShape(tp=tp, pp=pp), replicas=replicas),)
    )


def test_memory_fit_excludes_layouts_that_do_not_fit() -> None:
    m, g = get_model_spec("Llama-3.3-70B"), get_gpu_spec("H100")
    assert not memory_fit(m, g, InstanceShape(tp=1), 2048).fits
    assert not memory_fit(m, g, InstanceShape(tp=2), 2048).fits  # 70.6 GB weights per GPU
    assert memory_fit(m, g, InstanceShape(tp=4), 2048).fits
    p = plan(model="Llama-3.3-70B", gpu="H100", gpu_count=8, workload="1024:256")
    for c in p.candidates:
        assert c.fits
        for pool in c.pools:
            assert pool.tensor_parallel_size * pool.pipeline_parallel_size >= 4


def test_kv_capacity_shrinks_with_fewer_gpus_per_instance() -> None:
    m, g = get_model_spec("Llama-3.1-8B"), get_gpu_spec("H100")
    small = memory_fit(m, g, InstanceShape(tp=1), 1024)
    big = memory_fit(m, g, InstanceShape(tp=2), 1024)
    assert big.kv_tokens_per_rank > 2 * small.kv_tokens_per_rank


def test_tensor_parallel_across_nodes_is_penalised() -> None:
    m, g = get_model_spec("Llama-3.3-70B"), get_gpu_spec("H100")
    est = FleetEstimator(m, g, load_workload("1024:256"))
    tp8 = est.evaluate(general(8, 1, 2))
    tp16 = est.evaluate(general(16, 1, 1))
    assert tp16.tp_crosses_nodes and not tp8.tp_crosses_nodes
    # twice the GPUs per instance, yet slower to first token and far lower throughput
    assert tp16.ttft_ms_mean > tp8.ttft_ms_mean
    assert tp16.max_rate_rps < tp8.max_rate_rps / 2
    p = plan(model="Llama-3.3-70B", gpu="H100", gpu_count=16, objective="latency")
    assert p.best.pools[0].tensor_parallel_size <= 8


def test_moe_gets_expert_parallel_options() -> None:
    p = plan(model="Mixtral-8x7B", gpu="H100", gpu_count=16, workload="1024:256")
    labels = [c.label for c in p.candidates]
    assert any(c.main_pool.expert_parallel_size > 1 for c in p.candidates), labels
    dense = plan(model="Llama-3.1-8B", gpu="H100", gpu_count=8)
    assert all(pool.expert_parallel_size == 1 for c in dense.candidates for pool in c.pools)


def test_objectives_change_the_pick() -> None:
    latency = plan(model="Llama-3.1-8B", gpu="H100", gpu_count=8, objective="latency")
    throughput = plan(model="Llama-3.1-8B", gpu="H100", gpu_count=8, objective="throughput")
    assert latency.best.label != throughput.best.label
    assert (
        latency.best.pools[0].tensor_parallel_size > throughput.best.pools[0].tensor_parallel_size
    )
    assert latency.best.estimate.e2e_ms_mean < throughput.best.estimate.e2e_ms_mean
    assert throughput.best.estimate.throughput_tok_s > latency.best.estimate.throughput_tok_s


def test_min_gpus_uses_fewer_gpus_for_a_modest_rate() -> None:
    p = plan(
        model="Llama-3.1-8B",
        gpu="H100",
        gpu_count=16,
        objective="min_gpus",
        rate_rps=10,
        ttft_slo_ms=500,
        tpot_slo_ms=30,
    )
    best = p.best.estimate
    assert best.gpus < 16
    assert best.goodput_rps >= 10
    # and it is the fewest: every candidate meeting the rate uses at least as many GPUs
    assert all(c.estimate.gpus >= best.gpus for c in p.candidates if c.estimate.goodput_rps >= 10)


def test_goodput_prefers_layouts_that_meet_a_tight_tpot_slo() -> None:
    loose = plan(model="Llama-3.3-70B", gpu="H100", gpu_count=16, ttft_slo_ms=5000, tpot_slo_ms=200)
    tight = plan(model="Llama-3.3-70B", gpu="H100", gpu_count=16, ttft_slo_ms=5000, tpot_slo_ms=10)
    assert tight.objective == Objective.GOODPUT.value
    assert tight.best.estimate.tpot_ms <= 10
    assert loose.best.label != tight.best.label


def test_flags_and_instances_match_the_layout() -> None:
    p = plan(model="Mixtral-8x7B", gpu="H100", gpu_count=16)
    for c in p.candidates:
        for pool in c.pools:
            args = pool.vllm_args
            assert args[args.index("--tensor-parallel-size") + 1] == str(pool.tensor_parallel_size)
            assert args[args.index("--pipeline-parallel-size") + 1] == str(
                pool.pipeline_parallel_size
            )
            if pool.data_parallel_size > 1:
                assert args[args.index("--data-parallel-size") + 1] == str(pool.data_parallel_size)
            assert ("--enable-expert-parallel" in args) == (pool.expert_parallel_size > 1)
            assert len(pool.vllm_commands) == pool.replicas
        instances = c.execution_instances(p.serve_name)
        assert sum(i.gpu_count for i in instances) == c.layout.gpus <= 16
        assert len({i.port for i in instances}) == len(instances)


def test_disaggregated_layouts_carry_nixl_roles_and_instance_types() -> None:
    est = FleetEstimator(
        get_model_spec("Llama-3.1-8B"), get_gpu_spec("H100"), load_workload("2048:128")
    )
    layout = Layout(
        pools=(
            Pool(role=Role.PREFILL, shape=InstanceShape(tp=2), replicas=1),
            Pool(role=Role.DECODE, shape=InstanceShape(tp=1), replicas=2),
        )
    )
    from sage_cp_plugin.parallelism.planner import rank

    req = PlanRequest.build(model="Llama-3.1-8B", gpu="H100", gpu_count=4)
    cand = rank(req, est, [(layout, est.evaluate(layout))], "test", 0.0).best
    pre, dec = cand.pools
    cfg = json.loads(pre.vllm_args[pre.vllm_args.index("--kv-transfer-config") + 1])
    assert cfg == {"kv_connector": "NixlConnector", "kv_role": "kv_producer"}
    cfg = json.loads(dec.vllm_args[dec.vllm_args.index("--kv-transfer-config") + 1])
    assert cfg["kv_role"] == "kv_consumer"
    types = [i.instance_type for i in cand.execution_instances("m")]
    assert types == [
        ExecutionInstanceType.PREFILLING,
        ExecutionInstanceType.DECODING,
        ExecutionInstanceType.DECODING,
    ]
    assert "'" in pre.vllm_commands[0]  # the JSON is quoted for the shell


def test_trace_workloads_load_from_shared_traces() -> None:
    for name in ("azure_conv", "azure_code", "mooncake"):
        w = load_workload(name)
        assert w.rate_rps is not None and w.rate_rps > 0
        assert len(w.input_lengths) == len(w.output_lengths) > 100
    assert load_workload("azure_code").mean_input > load_workload("azure_conv").mean_input


@pytest.mark.parametrize("model", ["Llama-3.1-8B", "Llama-3.3-70B", "Qwen3-32B", "Mixtral-8x7B"])
def test_every_preset_plans_on_sixteen_h100(model: str) -> None:
    p = plan(model=model, gpu="H100", gpu_count=16)
    assert p.best.estimate.max_rate_rps > 0
    assert p.best.layout.gpus <= 16
