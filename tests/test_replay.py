"""`sage-cp replay`: trace formats, steady-state statistics, capacity search and the CLI.

Replays run the real coordinator against in-process simulators on the virtual clock (the GPU
engines are the only simulated part).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from sage_cp_plugin.entrypoints.cli import main

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.virtual.capacity import find_capacity
from sage_cp_plugin.virtual.compare import build_variants
from sage_cp_plugin.virtual.fleet_file import load_fleet
from sage_cp_plugin.virtual.runner import RequestOutcome, RunResult
from sage_cp_plugin.virtual.steady import steady_stats
from sage_cp_plugin.workloads import read_trace

# -- trace formats ---------------------------------------------------------------------------


def test_azure_public_csv_with_datetime_timestamps(tmp_path: Path) -> None:
    f = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    f.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.2000000,879,31\n"
    )
    t = read_trace(f, start=1)
    assert t.format == "azure" and t.timed
    assert [(r.input_tokens, r.output_tokens) for r in t.records] == [(396, 109), (879, 31)]
    assert [r.arrival_s for r in t.records] == pytest.approx([0.0, 0.204831])


def test_lengths_only_csv_needs_a_rate_and_gets_poisson_arrivals(tmp_path: Path) -> None:
    f = tmp_path / "lengths.csv"
    f.write_text("num_prefill_tokens,num_decode_tokens\n" + "100,5\n" * 400)
    t = read_trace(f)
    assert not t.timed and len(t.records) == 400
    from sage_cp_plugin.virtual.compare import ReplaySetup

    setup = ReplaySetup(windows=lambda _: t.records, members=lambda _: [], timed=False)
    with pytest.raises(ConfigurationError, match="no arrival times: give --rate"):
        setup.workload(0)
    setup.rate = 20.0
    arrivals = [r.arrival_s for r in setup.workload(0)]
    assert arrivals == sorted(arrivals)
    assert 399 / arrivals[-1] == pytest.approx(20.0, rel=0.15)  # Poisson at the given rate
    assert arrivals != [r.arrival_s for r in setup.workload(1)]  # seeds vary the arrivals


def test_project_jsonl_and_mooncake_are_told_apart(tmp_path: Path) -> None:
    own = tmp_path / "own.jsonl"
    own.write_text('{"arrival_s": 5, "input_tokens": 10}\n{"arrival_s": 6, "input_tokens": 7}\n')
    moon = tmp_path / "moon.jsonl"
    moon.write_text('{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [1]}\n')
    t = read_trace(own)
    assert t.format == "jsonl" and [r.arrival_s for r in t.records] == [0.0, 1.0]
    assert read_trace(moon).records[0].prefix_blocks == (1,)


@pytest.mark.parametrize(
    ("name", "text", "fmt", "message"),
    [
        ("a.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,5\n1,5,x\n", "auto",
         r"a.csv:3: .*field 'num_decode_tokens': 'x' is not a number"),
        ("b.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,5,5\n", "auto",
         r"b.csv:2: .*field 'TIMESTAMP': 'yesterday' is neither seconds nor a date-time"),
        ("c.csv", "when,tokens\n1,2\n", "auto", r"c.csv:1: no prompt length column"),
        ("d.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
         '{"timestamp": 1, "output_length": 1}\n', "auto",
         r"d.jsonl:2: .*field 'input_length' is missing"),
        ("e.jsonl", '{"arrival_s": 0, "input_tokens": -3}\n', "jsonl",
         r"e.jsonl:1: invalid workload record: field 'input_tokens'"),
    ],
)  # fmt: skip
def test_a_bad_row_gets_one_line_naming_row_and_field(
    tmp_path: Path, name: str, text: str, fmt: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigurationError, match=message) as info:
        read_trace(tmp_path / name, format=fmt)
    assert "\n" not in str(info.value)


def test_cli_reports_a_bad_trace_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,5\n1,five,5\n")
    assert main(["replay", str(bad), "--rate", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.csv:3" in err and "num_prefill_tokens" in err


# -- capacity search, steady state, variants, fleet files --------------------------------------


def test_capacity_search_brackets_then_bisects_to_the_tolerance() -> None:
    true_capacity = 37.3
    res = find_capacity(lambda r: r <= true_capacity, 5.0, tolerance=0.05)
    lo, hi = res.bracket
    assert lo <= true_capacity < hi and hi / lo - 1 <= 0.05
    assert res.capacity_rps == lo and (lo, True) in res.probes
    down = find_capacity(lambda r: r <= 0.7, 5.0, tolerance=0.05)
    assert 0.7 / 1.05 <= down.capacity_rps <= 0.7
    assert find_capacity(lambda r: False, 5.0).capacity_rps == 0.0


def _outcome(i: int, arrival: float, ttft_ms: float, e2e_ms: float, tokens: int) -> RequestOutcome:
    return RequestOutcome(
        index=i, arrival_s=arrival, input_tokens=10, output_tokens=tokens, slo_class=None,
        tenant=None, priority=2, has_slo=False, state="completed", completion_tokens=tokens,
        ttft_ms=ttft_ms, e2e_ms=e2e_ms, tpot_ms=(e2e_ms - ttft_ms) / (tokens - 1),
        finished_s=arrival + e2e_ms / 1000,
    )  # fmt: skip


def test_steady_state_excludes_warm_up_and_drain() -> None:
    # Arrivals over 0..10 s; the steady interval is 1..9 s. Each request streams 101 tokens
    # over 1 s after a 100 ms TTFT; the last one is a straggler finishing long after.
    outs = [_outcome(i, float(i), 100.0, 1100.0, 101) for i in range(10)]
    outs.append(_outcome(10, 10.0, 5000.0, 60_000.0, 101))
    result = RunResult(outs, 1.0, 70.0, {"prefix_cache_queries": 100}, {}, {}, [])
    s = steady_stats(result)
    assert s["steady_interval_s"] == [1.0, 9.0] and s["steady_requests"] == 9
    assert s["ttft_ms"]["p99"] == pytest.approx(100.0)  # the straggler is drain, not steady
    # Tokens inside [1, 9]: requests 1..7 all theirs, request 8 (8.1..9.1 s) 90 %, request 0
    # (0.1..1.1 s) 10 %, the straggler none.
    assert s["output_tokens_per_s"] == pytest.approx((7 * 101 + 0.9 * 101 + 0.1 * 101) / 8.0)
    assert s["goodput_rps"] == pytest.approx(9 / 8.0)
    assert s["slo_attainment"] is None and s["cached_prompt_fraction"] == 0.0


def test_saturated_throughput_counts_completions_while_requests_queue() -> None:
    # 100 requests at t=0 on a fleet finishing 10 per second, dispatched as slots free up.
    outs = []
    for i in range(100):
        o = _outcome(i, 0.0, 50.0, 100.0 * (i + 1), 2)
        o.queue_ms = max(0.0, 100.0 * i - 2000.0)  # 20 slots: the queue empties at 7.9 s
        outs.append(o)
    from sage_cp_plugin.virtual.steady import saturated_throughput

    assert saturated_throughput(outs) == pytest.approx(10.0, rel=0.05)
    assert saturated_throughput(outs[:15]) is None  # too few requests to saturate


def test_windows_are_spread_evenly_over_the_whole_trace() -> None:
    from sage_cp_plugin.workloads import WorkloadRecord
    from sage_cp_plugin.workloads.synthetic import evenly_spaced_windows

    recs = [WorkloadRecord(arrival_s=float(i), input_tokens=i + 1) for i in range(100)]
    offsets, wins = evenly_spaced_windows(recs, 10, 3)
    assert offsets == [0, 45, 90]
    assert [w[0].input_tokens for w in wins] == [1, 46, 91]
    assert all(w[0].arrival_s == 0.0 and len(w) == 10 for w in wins)
    assert evenly_spaced_windows(recs, 10, 1)[0] == [45]


def test_variants_share_one_baseline() -> None:
    vs = build_variants(["prefix_aware", "round_robin"], ["slo_aware", "fifo"])
    assert [v.name for v in vs] == [
        "round_robin+fifo",
        "prefix_aware+fifo",
        "round_robin+slo_aware",
    ]
    assert [v.compares for v in vs] == ["baseline", "router", "policy"]
    with pytest.raises(ConfigurationError, match="unknown router 'nope'"):
        build_variants(["nope"], [])


def test_fleet_file(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(
        "instances:\n"
        "  - {count: 2, preset: llama-3.1-8b-a100-tp1, num_kv_blocks: 4096}\n"
        "  - {count: 1, max_concurrent_requests: 8}\n"
    )
    members = load_fleet(f, seed=3)
    assert [m.config.num_kv_blocks for m in members][:2] == [4096, 4096]
    assert members[0].config.b0_ms == pytest.approx(16.4)  # from the A100 preset
    assert [m.max_concurrent_requests for m in members] == [64, 64, 8]
    assert len({m.config.seed for m in members}) == 3
    f.write_text("instances:\n  - {count: 1, num_kv_blocks: -1}\n")
    with pytest.raises(ConfigurationError, match=r"instances\[0\].num_kv_blocks"):
        load_fleet(f)


# -- the command, end to end (CI-sized) --------------------------------------------------------


def _finite_numbers(node: Any) -> bool:
    if isinstance(node, dict):
        return all(_finite_numbers(v) for v in node.values())
    if isinstance(node, list):
        return all(_finite_numbers(v) for v in node)
    return not isinstance(node, float) or math.isfinite(node)


def _variant(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in doc["variants"] if v["name"] == name)


def test_replay_smoke_json_shape_queue_and_directions(tmp_path: Path) -> None:
    """One instance, 150 requests of the bundled Azure code trace: at a rate far above what it
    serves a queue forms in the coordinator, and latency rises with the rate."""
    runs = {}
    for rate in (2.0, 400.0):
        out = tmp_path / f"r{rate:.0f}.json"
        argv = ["replay", "azure_code", "--window", "4000:150", "--rate", str(rate)]
        argv += ["--instances", "1", "--routers", "round_robin,load_balanced"]
        argv += ["--policies", "slo_aware", "--slo-ttft-ms", "2000", "--json", str(out)]
        assert main(argv) == 0
        runs[rate] = json.loads(out.read_text())
    doc = runs[400.0]
    keys = {"name", "router", "policy", "seeds", "completed", "failed", "ttft_ms", "tpot_ms"}
    keys |= {"e2e_ms", "output_tokens_per_s", "goodput_rps", "slo_attainment"}
    keys |= {"cached_prompt_fraction"}
    assert [v["name"] for v in doc["variants"]] == [
        "round_robin+fifo",
        "load_balanced+fifo",
        "round_robin+slo_aware",
    ]
    for v in doc["variants"]:
        assert keys <= set(v) and set(v["ttft_ms"]) == {"p50", "p90", "p99"}
        assert v["completed"] == 150 and v["failed"] == 0 and v["seeds"] == 1
        assert _finite_numbers(v) and v["ttft_ms"]["p90"] is not None
        # The pure decision is timed inside the replay (wall time: only its presence here).
        assert v["decision_us_p50"] > 0
    assert _variant(doc, "round_robin+fifo")["vs_baseline"]["ttft_ms_p90"] == 1.0
    slow, fast = _variant(runs[2.0], "round_robin+fifo"), _variant(doc, "round_robin+fifo")
    # 150 requests at once on 64 slots: the rest wait in the coordinator's queue.
    assert slow["queue_ms"]["p90"] < 1.0 < 100.0 < fast["queue_ms"]["p90"]
    assert fast["ttft_ms"]["p90"] > slow["ttft_ms"]["p90"]
    assert fast["slo_attainment"] < slow["slo_attainment"] == 1.0


def test_replay_capacity_and_out_dir(tmp_path: Path) -> None:
    argv = ["replay", "azure_code", "--window", "100:120", "--rate", "4", "--instances", "1"]
    argv += ["--routers", "round_robin", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "100"]
    argv += ["--capacity", "--out", str(tmp_path)]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "replay.json").read_text())
    base = doc["variants"][0]
    lo, hi = base["capacity_bracket_rps"]
    assert 0 < lo == base["capacity_rps"] < hi <= lo * 1.05 + 1e-9
    assert doc["environment"]["commit"] and isinstance(doc["environment"]["dirty"], bool)
    assert "| `round_robin+fifo` |" in (tmp_path / "replay.md").read_text()
    assert (tmp_path / "replay.png").stat().st_size > 1000


def test_decision_cost_probe_times_one_plan_per_dispatched_request() -> None:
    from sage_cp_plugin.sim import SimInstanceConfig
    from sage_cp_plugin.virtual.fleet import InProcessFleet, MemberSpec
    from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay
    from sage_cp_plugin.workloads import AZURE_CODE, load_azure, time_scaled

    w = time_scaled(load_azure(AZURE_CODE, limit=40, start=100), 200.0)
    fleet = InProcessFleet([MemberSpec(SimInstanceConfig(seed=i), 4) for i in range(2)])
    res = run_replay(w, fleet, CoordinatorConfig(router="prefix_aware"))
    d = res.decision
    done = sum(1 for o in res.outcomes if o.state == "completed")
    assert done == 40
    # 40 requests on 8 slots: many plans find no room (not counted), 40 dispatch.
    assert d["plan_decisions"] == 40
    assert 0 < d["plan_us_p50"] <= d["plan_us_p99"]
