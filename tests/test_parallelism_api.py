"""The document's API, the plugin registration and the `sage-cp plan` command."""

from __future__ import annotations

import json

import pytest
from sage_cp_plugin.entrypoints.cli import main

from sage_cp_plugin.parallelism import (
    ParallelismOptimizer,
    PlanRequest,
    RooflinePlanner,
    RuleBasedStrategy,
    rule_based_sizes,
)
from sage_cp_plugin.plugins import get_registry
from sage_cp_plugin.types import ParallelismConfig, ParallelismType


@pytest.mark.parametrize("gpus", [4, 8, 16])
def test_70b_fp16_on_80gb_gpus_never_gets_tp1(gpus: int) -> None:
    cfg = ParallelismOptimizer().recommend_strategy(140, gpus, 80)
    assert isinstance(cfg, ParallelismConfig)
    assert cfg.tensor_parallel_size > 1
    assert cfg.total_gpus == cfg.gpu_count <= gpus
    assert cfg.reason


def test_small_model_gets_data_parallel_replicas() -> None:
    cfg = ParallelismOptimizer().recommend_strategy(16, 8, 80)
    assert cfg.data_parallel_size >= 2
    assert cfg.strategy in (ParallelismType.DATA_PARALLEL, ParallelismType.HYBRID)


def test_optimize_hybrid_config_uses_the_gpus() -> None:
    opt = ParallelismOptimizer()
    for n in (4, 8, 16):
        tp, pp, dp = opt.optimize_hybrid_config(n)
        assert tp * pp * dp <= n and tp * pp >= 4  # 70B never fits on fewer than 4


def test_rule_based_is_the_documents_thresholds() -> None:
    assert rule_based_sizes(16) == (4, 2, 2)
    assert rule_based_sizes(32) == (4, 2, 4)
    assert rule_based_sizes(8) == (4, 1, 2)
    assert rule_based_sizes(12) == (4, 1, 3)
    assert rule_based_sizes(4) == (4, 1, 1)
    assert rule_based_sizes(6) == (4, 1, 1)
    assert rule_based_sizes(3) == (2, 1, 1)
    assert rule_based_sizes(1) == (1, 1, 1)


def test_strategies_are_registered_plugins() -> None:
    reg = get_registry()
    assert {"roofline", "rule_based"} <= set(reg.names("parallelism strategy"))
    assert isinstance(reg.create("parallelism strategy", "roofline"), RooflinePlanner)
    rb = reg.create("parallelism strategy", "rule_based")
    assert isinstance(rb, RuleBasedStrategy)
    req = PlanRequest.build(model="Llama-3.1-8B", gpu="H100", gpu_count=8)
    assert rb.plan(req).best.label == "2x[TP4 PP1]"


def test_roofline_beats_rules_for_a_small_model() -> None:
    req = PlanRequest.build(model="Llama-3.1-8B", gpu="H100", gpu_count=8)
    best = RooflinePlanner().plan(req).best.estimate
    rules = RuleBasedStrategy().plan(req).best.estimate
    assert best.throughput_tok_s > rules.throughput_tok_s


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "plan",
            "--model",
            "Llama-3.3-70B",
            "--gpu",
            "H100",
            "--gpus",
            "16",
            "--ttft-ms",
            "2000",
            "--tpot-ms",
            "100",
            "--top",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "objective goodput" in out
    assert "--tensor-parallel-size" in out and "vllm serve meta-llama/Llama-3.3-70B" in out
    assert sum(1 for line in out.splitlines() if line[:3].strip() in {"1", "2", "3"}) == 3


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "plan",
            "--model",
            "Mixtral-8x7B",
            "--gpu",
            "H100",
            "--gpus",
            "16",
            "--workload",
            "512:128",
            "--objective",
            "throughput",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["objective"] == "throughput" and data["gpu_count"] == 16
    best = data["candidates"][0]
    assert {"estimate", "pools", "label"} <= set(best)
    insts = data["best_execution_instances"]
    assert sum(i["gpu_count"] for i in insts) == best["estimate"]["gpus"]


def test_cli_rule_based_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "plan",
                "--model",
                "Llama-3.1-8B",
                "--gpu",
                "A100-80G",
                "--gpus",
                "8",
                "--strategy",
                "rule_based",
            ]
        )
        == 0
    )
    assert "strategy rule_based" in capsys.readouterr().out
    assert main(["plan", "--model", "Nope", "--gpu", "H100", "--gpus", "8"]) == 2
    assert "known model presets" in capsys.readouterr().err
    assert main(["plan", "--model", "DeepSeek-V3", "--gpu", "H100", "--gpus", "8"]) == 2
    assert "needs at least 16 GPUs" in capsys.readouterr().err
