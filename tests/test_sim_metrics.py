"""The simulator's per-token metrics (plain tallies copied into Prometheus when rendered) render
exactly what Prometheus' own `observe`/`inc` would have: same buckets, same float sums."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sage_cp_plugin.sim.metrics import _ITL_BUCKETS, _LABELS, SimMetrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.name.endswith("_created"):  # wall-clock creation time
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_tallied_metrics_render_like_prometheus_observations() -> None:
    rng = np.random.default_rng(5)
    # Values on bucket bounds, between them, zero and past the last bound.
    values = [*_ITL_BUCKETS, 0.0, 1e3, *rng.exponential(0.05, 5000).tolist()]
    tokens = rng.integers(0, 4096, 500).tolist()

    sim = SimMetrics("m")
    ref = CollectorRegistry()
    lv = {"model_name": "m", "engine": "0"}
    itl = Histogram(
        "vllm:inter_token_latency_seconds", "x", _LABELS, buckets=_ITL_BUCKETS, registry=ref
    ).labels(**lv)
    gen = Counter("vllm:generation_tokens", "x", _LABELS, registry=ref).labels(**lv)
    for v in values:
        sim.itl.observe(v)
        itl.observe(v)
    for n in tokens:
        sim.generation_tokens.inc(n)
        gen.inc(n)

    got = _samples(sim.render(0, 0, 0.0).decode())
    want = _samples(generate_latest(ref).decode())
    assert want  # the reference has the histogram's buckets, count and sum
    for key, value in want.items():
        assert got[key] == value, key  # exact: same float additions in the same order
    # Rendering twice (a second scrape) changes nothing; later updates show up.
    assert _samples(sim.render(0, 0, 0.0).decode()) == got
    sim.itl.observe(0.02)
    again = _samples(sim.render(0, 0, 0.0).decode())
    assert (
        again[("vllm:inter_token_latency_seconds_count", tuple(sorted(lv.items())))]
        == len(values) + 1
    )
