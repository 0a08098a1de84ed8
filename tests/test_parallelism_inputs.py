"""Bad input to the planner: each gives one clear error naming the field and value."""

from __future__ import annotations

import pytest

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.parallelism import (
    ContradictorySLOError,
    NoFeasibleLayoutError,
    ParallelismOptimizer,
    PlanningError,
    PlanRequest,
    RooflinePlanner,
    UnknownPresetError,
    WorkloadSpec,
    load_workload,
)


def test_model_that_fits_on_no_layout_says_how_many_gpus_it_needs() -> None:
    req = PlanRequest.build(model="DeepSeek-V3", gpu="H100", gpu_count=8)
    with pytest.raises(NoFeasibleLayoutError, match="needs at least 16 GPUs") as info:
        RooflinePlanner().plan(req)
    assert info.value.gpus_needed == 16
    assert isinstance(info.value, ConfigurationError)
    with pytest.raises(NoFeasibleLayoutError, match="needs at least 4 GPUs"):
        ParallelismOptimizer().recommend_strategy(140, 2, 80)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpu_count": 0}, "gpu_count=0"),
        ({"gpu_count": -4}, "gpu_count=-4"),
        ({"rate_rps": -1.0}, "rate_rps=-1.0"),
        ({"ttft_slo_ms": 0.0}, "ttft_slo_ms"),
        ({"workload": "0:128"}, "0:128"),
        ({"workload": "512:-1"}, "512:-1"),
        ({"top_k": 0}, "top_k=0"),
    ],
)
def test_zero_or_negative_sizes(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"model": "Llama-3.1-8B", "gpu": "H100", "gpu_count": 8}
    args.update(kwargs)
    with pytest.raises(PlanningError, match=field.replace("-", r"\-").replace(".", r"\.")):
        PlanRequest.build(**args)  # type: ignore[arg-type]


def test_document_api_rejects_non_positive_sizes() -> None:
    opt = ParallelismOptimizer()
    with pytest.raises(PlanningError, match="model_size_gb=0"):
        opt.recommend_strategy(0, 8, 80)
    with pytest.raises(PlanningError, match="gpu_memory_gb=-80"):
        opt.recommend_strategy(16, 8, -80)
    with pytest.raises(PlanningError, match="gpu_count=0"):
        opt.optimize_hybrid_config(0)


@pytest.mark.parametrize(
    ("kwargs", "listed"),
    [
        ({"model": "Llama-9"}, "Llama-3.1-8B, Llama-3.3-70B"),
        ({"gpu": "B300"}, "A100-80G, H100, H200, L40S"),
        ({"workload": "sharegpt"}, "azure_code, azure_conv"),
    ],
)
def test_unknown_presets_list_the_known_ones(kwargs: dict[str, str], listed: str) -> None:
    args: dict[str, object] = {"model": "Llama-3.1-8B", "gpu": "H100", "gpu_count": 8}
    args.update(kwargs)
    with pytest.raises(UnknownPresetError, match=listed):
        PlanRequest.build(**args)  # type: ignore[arg-type]


def test_contradictory_slos() -> None:
    with pytest.raises(
        ContradictorySLOError, match=r"tpot_slo_ms=200\.0 exceeds ttft_slo_ms=100\.0"
    ):
        PlanRequest.build(
            model="Llama-3.1-8B", gpu="H100", gpu_count=8, ttft_slo_ms=100, tpot_slo_ms=200
        )
    with pytest.raises(ContradictorySLOError):
        load_workload("azure_conv", ttft_slo_ms=20, tpot_slo_ms=50)
    # equal is allowed (a one-token answer's TTFT can equal a step)
    PlanRequest.build(model="Llama-3.1-8B", gpu="H100", gpu_count=8, ttft_slo_ms=50, tpot_slo_ms=50)


def test_objectives_that_lack_their_targets() -> None:
    with pytest.raises(PlanningError, match=r"goodput.*needs an SLO"):
        PlanRequest.build(model="Llama-3.1-8B", gpu="H100", gpu_count=8, objective="goodput")
    with pytest.raises(PlanningError, match=r"min_gpus.*needs a target rate"):
        PlanRequest.build(model="Llama-3.1-8B", gpu="H100", gpu_count=8, objective="min_gpus")
    with pytest.raises(PlanningError, match="objective='fastest'"):
        PlanRequest.build(model="Llama-3.1-8B", gpu="H100", gpu_count=8, objective="fastest")


def test_unreachable_rate_for_min_gpus() -> None:
    req = PlanRequest.build(
        model="Llama-3.3-70B", gpu="H100", gpu_count=4, objective="min_gpus", rate_rps=10_000
    )
    with pytest.raises(NoFeasibleLayoutError, match="rate_rps=10000"):
        RooflinePlanner().plan(req)


def test_workload_spec_validation() -> None:
    # direct construction: pydantic's ValidationError (a ValueError) carries the message
    with pytest.raises(ValueError, match="one output length per input length"):
        WorkloadSpec(input_lengths=(1, 2), output_lengths=(1,))
    with pytest.raises(PlanningError, match="does not exist"):
        load_workload("/nonexistent/trace.csv")
