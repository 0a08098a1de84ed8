"""Smoke runs of every benchmark scenario (small: the full runs live in benchmarks/results/)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sage_cp_plugin.entrypoints.cli import main

from sage_cp_plugin.virtual.bench import run_scenario
from sage_cp_plugin.virtual.report import write_reports
from sage_cp_plugin.virtual.scenarios import NAMES, get_scenario


@pytest.mark.parametrize("name", [n for n in NAMES if n != "scale"])
def test_scenario_smoke(name: str, tmp_path: Path) -> None:
    scenario = get_scenario(name)
    result = run_scenario(scenario, [0], smoke=True)
    labels = {v["label"] for v in result["variants"]}
    assert scenario.baseline in labels and len(labels) >= 2
    for v in result["variants"]:
        stats = v["stats"]
        # Nothing is lost, not even when an instance dies mid-run.
        assert stats["all.lost"]["mean"] == 0, (v["label"], v["runs"][0]["failures"])
        assert stats["all.completed"]["mean"] == v["info"]["requests"]
        assert not math.isnan(stats["all.e2e_ms_p50"]["mean"])
    assert result["goals"], "every scenario checks its goals"
    paths = write_reports(scenario, result, tmp_path)
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    data = json.loads(paths[0].read_text())
    assert data["scenario"] == name
    # Every result file says which code made it (this suite runs from a git checkout).
    assert len(data["provenance"]["commit"]) == 40 and isinstance(data["provenance"]["dirty"], bool)
    assert data["provenance"]["commit"][:12] in paths[1].read_text()
    assert f"| {scenario.baseline} |" in paths[1].read_text()
    assert paths[2].stat().st_size > 1000


def test_bench_command_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "scale", "--smoke", "--seeds", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "scale_smoke.json").read_text())
    for v in data["variants"]:
        assert v["stats"]["decision.us_per_decision"]["mean"] > 0
        assert v["stats"]["all.lost"]["mean"] == 0
    assert "| round_robin |" in capsys.readouterr().out


def test_unknown_scenario_is_a_clear_error() -> None:
    from sage_cp_plugin.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="known: pd_separation"):
        get_scenario("nope")
