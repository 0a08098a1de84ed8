"""Workload files, prompt building, trace loaders and synthetic generators."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.routing.prefix_index import chunk_hashes
from sage_cp_plugin.sim.tokens import tokenize
from sage_cp_plugin.types import RequestMetadata, RequestPriority
from sage_cp_plugin.workloads import (
    BLOCK_TOKENS,
    DEFAULT_CLASSES,
    PromptBuilder,
    WorkloadRecord,
    assign_classes,
    assign_tenants,
    gamma_arrivals,
    load_azure,
    load_ladder,
    load_mooncake,
    load_workload,
    mean_rate,
    poisson_arrivals,
    save_workload,
    synthetic,
)
from sage_cp_plugin.workloads.traces import TRACES_ENV, TraceError, load_trace, resolve_trace


def test_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "w.jsonl"
    p.write_text(
        "# a comment\n"
        '{"arrival_s": 1.5, "input_tokens": 10, "output_tokens": 4, "priority": "high",'
        ' "slo_class": "interactive", "ttft_slo_ms": 200, "prefix_blocks": [1, 2]}\n'
        "\n"
        '{"arrival_s": 0.5, "prompt": "hello there world", "tenant": "acme"}\n'
    )
    recs = load_workload(p)
    assert [r.arrival_s for r in recs] == [0.5, 1.5]  # sorted by arrival
    assert recs[0].prompt_tokens == 3 and recs[0].output_tokens == 128
    assert recs[1].priority == RequestPriority.HIGH and recs[1].prefix_blocks == (1, 2)
    out = tmp_path / "out.jsonl"
    save_workload(out, recs)
    assert load_workload(out) == recs
    p.write_text('{"arrival_s": 0}\n{"arrival_s": -1, "input_tokens": 3}\n')
    with pytest.raises(ConfigurationError, match=r"w.jsonl:1"):
        load_workload(p)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_workload(tmp_path / "missing.jsonl")


def test_prompts_have_exact_length_and_share_only_common_blocks() -> None:
    b = PromptBuilder(seed=3)
    a = b.build(WorkloadRecord(arrival_s=0, input_tokens=1300, prefix_blocks=(5, 6, 7)), 0)
    c = b.build(WorkloadRecord(arrival_s=0, input_tokens=1100, prefix_blocks=(5, 6, 9)), 1)
    d = b.build(WorkloadRecord(arrival_s=0, input_tokens=700), 2)
    e = b.build(WorkloadRecord(arrival_s=0, input_tokens=700), 3)
    wa, wc, wd, we = tokenize(a), tokenize(c), tokenize(d), tokenize(e)
    assert (len(wa), len(wc), len(wd)) == (1300, 1100, 700)
    shared = next(i for i, (x, y) in enumerate(zip(wa, wc, strict=False)) if x != y)
    assert shared == 2 * BLOCK_TOKENS  # exactly the two common blocks
    assert wd[0] != we[0]  # private prompts differ from their first token
    # The coordinator's length estimate (chars / 4) matches the token count closely.
    assert abs(RequestMetadata(prompt=d).estimated_input_tokens() - 700) <= 5
    # Character-chunk hashes (prefix_aware routing) agree on the shared part only.
    ha, hc = chunk_hashes(a, 256, 512), chunk_hashes(c, 256, 512)
    common = next(i for i, (x, y) in enumerate(zip(ha, hc, strict=False)) if x != y)
    assert common == (len(b.block(5)) + len(b.block(6))) // 256


def test_synthetic_arrivals_and_mixes() -> None:
    rng = np.random.default_rng(0)
    t = poisson_arrivals(rng, 10.0, 20_000)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)
    g = np.diff(gamma_arrivals(rng, 10.0, 20_000, cv=3.0))
    assert g.mean() == pytest.approx(0.1, rel=0.1) and g.std() / g.mean() > 2.5
    w = synthetic(rng, 2000, 20.0)
    assert mean_rate(w) == pytest.approx(20.0, rel=0.1)
    w = assign_classes(w, DEFAULT_CLASSES, rng)
    shares = {c.name: sum(r.slo_class == c.name for r in w) / len(w) for c in DEFAULT_CLASSES}
    assert shares["interactive"] == pytest.approx(0.3, abs=0.04)
    inter = next(r for r in w if r.slo_class == "interactive")
    assert inter.ttft_slo_ms == 200 and inter.tpot_slo_ms == 50
    w = assign_tenants(w, 5, rng)
    counts = [sum(r.tenant == f"tenant-{i}" for r in w) for i in range(5)]
    assert counts[0] > counts[4]  # Zipf popularity
    ladder = load_ladder(w, capacity_rps=10.0, levels=(0.5, 1.0))
    assert mean_rate(ladder[0.5]) == pytest.approx(5.0, rel=1e-6)
    assert mean_rate(ladder[1.0]) == pytest.approx(10.0, rel=1e-6)


def test_trace_loaders() -> None:
    conv = load_azure("azure_conv_2023.csv", limit=100)
    code = load_azure("azure_code_2023.csv", limit=100, start=10)
    assert len(conv) == 100 and conv[0].arrival_s == 0.0
    assert conv[0].input_tokens == 374 and conv[0].output_tokens == 44
    assert np.mean([r.input_tokens for r in code]) > np.mean([r.input_tokens for r in conv])
    moon = load_mooncake(limit=50, max_input_tokens=8192)
    assert moon[0].prefix_blocks[:3] == (0, 1, 2)
    assert all(r.input_tokens <= 8192 for r in moon)
    ids = [h for r in moon for h in r.prefix_blocks]
    assert len(set(ids)) < len(ids)  # the trace really re-uses blocks


def test_trace_windows_by_start_and_limit() -> None:
    full = load_trace("azure_conv", limit=30)
    window = load_trace("azure_conv_2023.csv", start=10, limit=5)
    assert [r.input_tokens for r in window] == [r.input_tokens for r in full[10:15]]
    assert window[0].arrival_s == 0.0  # re-based to the window's first arrival
    gaps = [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(full[10:15])]
    assert [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(window)] == pytest.approx(gaps)
    moon = load_trace("mooncake", start=3, limit=2)
    assert [r.prefix_blocks for r in moon] == [r.prefix_blocks for r in load_mooncake(limit=5)[3:]]
    assert load_trace("azure_code", start=10**6) == []


def test_users_trace_folder_is_searched_before_the_bundled_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "azure_conv_2023.csv").write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n5.0,7,3\n6.5,9,4\n"
    )
    (tmp_path / "mine.jsonl").write_text(
        '{"timestamp": 1000, "input_length": 600, "output_length": 2, "hash_ids": [4, 5]}\n'
    )
    monkeypatch.setenv(TRACES_ENV, str(tmp_path))
    own = load_trace("azure_conv")
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in own] == [
        (0.0, 7, 3),
        (1.5, 9, 4),
    ]
    assert load_trace("mine.jsonl")[0].prefix_blocks == (4, 5)
    # Names the user's folder lacks still come from the bundled data.
    assert resolve_trace("mooncake").parent.name == "data"
    assert len(load_trace("mooncake", limit=3)) == 3


def test_trace_errors_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases: list[tuple[str | Path, str]] = [
        ("nope.csv", "does not exist in .* or set SAGE_CP_TRACES"),
        (tmp_path / "missing.csv", "does not exist"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,5\n1,x,5\n")
    cases.append((bad, r"bad.csv:3: not a trace row"))
    cols = tmp_path / "cols.jsonl"
    cols.write_text('{"timestamp": 0, "input_len": 5}\n')
    cases.append((cols, r"cols.jsonl:1: .*expected columns timestamp"))
    late = tmp_path / "late.csv"
    late.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n2,5,5\n1,5,5\n")
    cases.append((late, r"late.csv:3: arrival 1.0 precedes"))
    other = tmp_path / "t.txt"
    other.write_text("x")
    cases.append((other, "unknown format"))
    for name, message in cases:
        with pytest.raises(TraceError, match=message) as info:
            load_trace(name)
        assert "\n" not in str(info.value)
    monkeypatch.setenv(TRACES_ENV, str(tmp_path / "no-such-folder"))
    with pytest.raises(ConfigurationError, match=r"SAGE_CP_TRACES=.* is not a directory"):
        load_trace("azure_conv")
