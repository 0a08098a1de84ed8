"""What-if: `sage-cp replay` on several fleets (counts, presets, prices, PD pools).

The replays run the real coordinator against in-process simulators on the virtual clock (the
GPU engines are the only simulated part).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sage_cp_plugin.entrypoints.cli import main

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.virtual.fleet_file import load_fleet, pd_config, read_fleet_file
from sage_cp_plugin.virtual.whatif import mark_pareto


def _fleet(tmp: Path, name: str, body: str) -> Path:
    f = tmp / f"{name}.yaml"
    f.write_text(f"name: {name}\ninstances:\n{body}")
    return f


def test_fleet_file_prices_and_pd_pools(tmp_path: Path) -> None:
    f = _fleet(
        tmp_path,
        "pd",
        "  - {count: 1, role: prefill, price_per_gpu_hour: 3.0}\n"
        "  - {count: 2, role: decode, price_per_1k_tokens: 0.5}\n",
    )
    members = load_fleet(f)
    assert [m.extra for m in members] == [
        {"price_per_gpu_hour": 3.0},
        {"price_per_1k_tokens": 0.5},
        {"price_per_1k_tokens": 0.5},
    ]
    assert [m.config.role for m in members] == ["prefill", "decode", "decode"]
    pd = pd_config(read_fleet_file(f))
    assert pd is not None and pd.disaggregated and pd.disaggregation_trigger == "predicted"
    general = _fleet(tmp_path, "g", "  - {count: 2}\n")
    assert pd_config(read_fleet_file(general)) is None
    bad = _fleet(tmp_path, "bad", "  - {count: 1, price_per_gpu_hour: -1}\n")
    with pytest.raises(ConfigurationError, match="price_per_gpu_hour"):
        load_fleet(bad)


def test_pareto_front_keeps_only_undominated_fleets() -> None:
    entries = [
        {"name": "a", "cost": 1.0, "slo_attainment": 0.80},
        {"name": "b", "cost": 2.0, "slo_attainment": 0.95},
        {"name": "c", "cost": 2.5, "slo_attainment": 0.90},  # dominated by b
        {"name": "d", "cost": 1.0, "slo_attainment": 0.70},  # dominated by a
    ]
    mark_pareto(entries)
    assert [e["pareto"] for e in entries] == [True, True, False, False]


def test_whatif_reports_attainment_gpu_hours_and_cost_per_fleet(tmp_path: Path) -> None:
    """One H100 against three, at a load one cannot hold within the TTFT SLO: the bigger
    fleet meets the SLO more often, costs more, and both are on the Pareto front."""
    one = _fleet(tmp_path, "one", "  - {count: 1, price_per_gpu_hour: 4.0}\n")
    three = _fleet(tmp_path, "three", "  - {count: 3, price_per_gpu_hour: 4.0}\n")
    out = tmp_path / "out"
    argv = ["replay", "azure_conv", "--window", "2000:80", "--rate", "60"]
    argv += ["--fleet", str(one), "--fleet", str(three), "--routers", "load_balanced"]
    argv += ["--slo-ttft-ms", "300", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "whatif.json").read_text())
    assert doc["router"] == "load_balanced" and doc["policy"] == "fifo"
    f1, f3 = doc["fleets"]
    assert (f1["name"], f1["gpus"], f3["name"], f3["gpus"]) == ("one", 1, "three", 3)
    for f in (f1, f3):
        run = f["runs"][0]
        assert run["completed"] == 80
        # GPU-hours: the fleet's GPUs over the replay's virtual time; rent at 4 per GPU-hour.
        assert run["gpu_hours"] == pytest.approx(f["gpus"] * run["virtual_s"] / 3600)
        assert run["cost"] == pytest.approx(4.0 * run["gpu_hours"])
        assert 0 < run["metered_cost"] <= run["cost"] + 1e-12  # busy share <= rent
    assert f3["slo_attainment"] > f1["slo_attainment"]
    assert f3["cost"] > f1["cost"]
    assert f1["pareto"] is True and f3["pareto"] is True
    assert "| `three` |" in (out / "whatif.md").read_text()
    assert (out / "whatif.png").stat().st_size > 1000


def test_whatif_refuses_several_routers_and_duplicate_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _fleet(tmp_path, "a", "  - {count: 1}\n")
    b = _fleet(tmp_path, "b", "  - {count: 2}\n")
    argv = ["replay", "azure_conv", "--window", "0:5", "--rate", "1"]
    assert main([*argv, "--fleet", str(a), "--fleet", str(b), "--routers", "a,b"]) == 2
    assert "give one name to --routers" in capsys.readouterr().err
    assert main([*argv, "--fleet", str(a), "--fleet", str(a)]) == 2
    assert "fleet names must differ" in capsys.readouterr().err


def test_whatif_runs_a_pd_fleet_split_per_request(tmp_path: Path) -> None:
    """Two GPUs as one general pool or as a prefill and a decode instance (PD pools turn PD
    separation on): both fleets serve every request; GPU counts and names are reported."""
    general = _fleet(tmp_path, "general", "  - {count: 2}\n")
    pd = _fleet(tmp_path, "pd", "  - {count: 1, role: prefill}\n  - {count: 1, role: decode}\n")
    out = tmp_path / "w.json"
    argv = ["replay", "azure_code", "--window", "300:40", "--rate", "4"]
    argv += ["--fleet", str(general), "--fleet", str(pd), "--slo-ttft-ms", "2000"]
    assert main([*argv, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    g, p = doc["fleets"]
    assert (g["pd"], p["pd"]) == (False, True) and g["gpus"] == p["gpus"] == 2
    assert g["completed"] == p["completed"] == 40
    assert g["cost"] is None and g["pareto"] is not None  # unpriced: GPU-hours is the axis
