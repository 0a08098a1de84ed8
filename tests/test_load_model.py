"""The token-level load model: exact bookkeeping, predicted TTFT, the scraped residual, and
the approximate prefix-cache view with its eviction model. No HTTP, no clocks: times are
passed in."""

from __future__ import annotations

import pytest

from sage_cp_plugin import load_model as lm
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
from tests.helpers import item, state


def test_booking_follows_a_request_from_dispatch_to_end() -> None:
    s = state("a")
    b1 = lm.book(s, 1000, 50, cached_tokens=200, now=0.0)
    b2 = lm.book(s, 300, 10, cached_tokens=0, now=0.0)
    # Only the uncached part of each prompt is prefill work.
    assert (s.prefill_tokens_queued, s.prefill_seqs, s.decode_seqs) == (800 + 300, 2, 0)
    lm.first_token(b1, now=0.05)
    assert (s.prefill_tokens_queued, s.prefill_seqs, s.decode_seqs) == (300, 1, 1)
    assert s.decode_kv_tokens == 1050
    lm.release(b1, now=0.5)
    lm.release(b1, now=0.6)  # a second release changes nothing
    lm.release(b2, now=0.6)  # failed before its first token
    assert (s.prefill_tokens_queued, s.prefill_seqs, s.decode_seqs, s.decode_kv_tokens) == (
        0,
        0,
        0,
        0,
    )
    assert not s.prefill_queue


def test_prefill_speed_is_learnt_from_ttft_against_the_work_ahead() -> None:
    s = state("a")
    s.decode_s_per_token.add(0.0)  # no decode steps: TTFT is pure prefill here
    for k in range(50):
        b = lm.book(s, 1000, 10, 0, now=float(k))
        lm.first_token(b, now=k + 0.02)  # 1000 tokens in 20 ms
        lm.release(b, now=k + 0.5)
    assert lm.prefill_s_per_token(s) == pytest.approx(2e-5, rel=0.01)


def test_predicted_ttft_counts_prefill_tokens_not_requests() -> None:
    few_long, many_short = state("long"), state("short")
    lm.book(few_long, 8000, 10, 0, now=0.0)
    for _ in range(6):
        lm.book(many_short, 100, 10, 0, now=0.0)
    assert lm.predicted_ttft_s(many_short, 500, now=0.0) < lm.predicted_ttft_s(
        few_long, 500, now=0.0
    )
    # Cached tokens are free: the same prompt with most of it cached is predicted faster.
    assert lm.predicted_ttft_s(few_long, 100, 0.0) < lm.predicted_ttft_s(few_long, 4000, 0.0)


def test_head_of_the_prefill_queue_drains_while_we_wait() -> None:
    s = state("a")
    lm.book(s, 4000, 10, 0, now=0.0)
    ahead_now = lm.prefill_ahead(s, 0.0)
    later = lm.prefill_ahead(s, 0.1)
    assert ahead_now == 4000
    assert 0 <= later < ahead_now
    # Never below zero, however long we wait without a first token.
    assert lm.prefill_ahead(s, 100.0) == 0


def test_scraped_queue_corrects_only_work_that_is_not_ours_and_fades() -> None:
    s = state("a")
    for _ in range(3):
        lm.book(s, 1000, 10, 0, now=0.0)
    s.in_flight = 3
    base = lm.prefill_ahead(s, 0.0)
    sc = s.scraped
    sc.running, sc.waiting, sc.fresh, sc.scraped_at, sc.interval_s = 1, 2, True, 0.0, 1.0
    sc.ours_at_scrape = 3
    # vLLM sees exactly our three requests: nothing is added (never counted twice).
    assert lm.prefill_ahead(s, 0.0) == base
    # Five more waiting that did not come through us: they count...
    sc.waiting = 7
    extra = lm.prefill_ahead(s, 0.0) - base
    assert extra > 0
    # ...less as the scrape ages, and not at all two intervals later or when stale.
    assert 0 < lm.residual_tokens(s, 1.0) < lm.residual_tokens(s, 0.0) == extra
    assert lm.residual_tokens(s, 2.0) == 0
    sc.fresh = False
    assert lm.residual_tokens(s, 0.0) == 0


def test_load_does_not_add_our_own_requests_twice() -> None:
    s = state("a", in_flight=4, cap=10)
    sc = s.scraped
    sc.running, sc.waiting, sc.fresh, sc.ours_at_scrape = 3, 1, True, 4
    assert s.load == pytest.approx(0.4)
    sc.waiting = 3  # two requests vLLM holds that are not ours
    assert s.load == pytest.approx(0.6)


def test_approximate_cache_reads_without_learning_and_evicts_by_capacity() -> None:
    a, b = state("a", metadata={"kv_capacity_tokens": 600}), state("b")
    view = ApproximatePrefixCache(chunk_chars=40)
    view.set_capacity(a)
    view.set_capacity(b)
    doc = "".join(f"shared system prompt line {k:03d}. " for k in range(30))  # ~900 chars
    first = item(1, prompt=doc + "Q1")
    assert view.cached_tokens(first, [a, b]) == [0, 0]
    assert view.cached_tokens(first, [a, b]) == [0, 0]  # asking twice learns nothing
    view.on_dispatch(first, "a")
    view.on_dispatch(first, "b")
    again = item(2, prompt=doc + "another question")
    hit_a, hit_b = view.cached_tokens(again, [a, b])
    assert hit_a > 0 and hit_b > 0
    # `a` holds 600 tokens: after two other long prompts, the document is evicted there only.
    for k in (3, 4):
        other = item(k, prompt=f"unrelated text {k} " * 80)
        view.on_dispatch(other, "a")
    hit_a, hit_b = view.cached_tokens(again, [a, b])
    assert hit_a == 0 and hit_b > 0


def test_a_split_request_teaches_the_prefill_instance_only() -> None:
    # Disaggregated: the prefill leg's answer is its first token there (the speed is learnt
    # from it and its load leaves with the KV); the decode leg prefills nothing and its first
    # token, which waited for another instance, teaches no prefill speed.
    pre, dec = state("prefill"), state("decode")
    pre.decode_s_per_token.add(0.0)
    dec.decode_s_per_token.add(0.0)
    bp = lm.book(pre, 2000, 50, 0, now=0.0)
    bd = lm.book(dec, 2000, 50, cached_tokens=2000, now=0.0, learns=False)
    assert dec.prefill_tokens_queued == 1  # at least one token: the first is computed there
    lm.prefill_done(bp, now=0.04)  # 2000 tokens in 40 ms
    assert (pre.prefill_tokens_queued, pre.prefill_seqs, pre.decode_seqs) == (0, 0, 0)
    assert lm.prefill_s_per_token(pre) == pytest.approx(2e-5)
    prior = lm.prefill_s_per_token(dec)
    lm.first_token(bd, now=0.3)  # transfer and a step later
    assert (dec.decode_seqs, dec.decode_kv_tokens) == (1, 2050)
    assert lm.prefill_s_per_token(dec) == prior
    lm.release(bd, now=1.0)
    assert (dec.decode_seqs, dec.prefill_seqs) == (0, 0)


def test_a_prefill_instance_with_nothing_queued_predicts_a_decode_step_not_a_chunk() -> None:
    """A prefill instance's few whole requests decoded between full chunks of split prompts,
    so its learnt step holds a chunk. With a decode step measured without long prefills
    (the decode instances'), its predicted step runs from that (nothing queued) to the
    full-chunk step its own speeds predict (a chunk queued); without one, as before."""
    s = state("p")
    s.decode_s_per_token.add(0.113)  # learnt beside full chunks
    s.prefill_s_per_token.add(5e-6)
    chunk = lm.chunk_tokens(s)
    full = lm.prefill_time_s(s, chunk)
    # Nothing queued: the decode step measured elsewhere (before: 0.113, a TPOT miss
    # for a 100 ms objective on an idle instance).
    assert lm.shared_step_s(s, 0.0, idle_step_s=0.007) == pytest.approx(0.007)
    assert lm.shared_step_s(s, 0.0) == pytest.approx(0.113)
    lm.book(s, chunk // 2, 10, 0, now=0.0)
    assert lm.shared_step_s(s, 0.0, idle_step_s=0.007) == pytest.approx((0.007 + full) / 2)
    lm.book(s, chunk, 10, 0, now=0.0)  # a chunk or more queued: the full-chunk step
    assert lm.shared_step_s(s, 0.0, idle_step_s=0.007) == pytest.approx(full)
    # Never above the instance's own estimate, which bounds a step without prefill.
    assert lm.shared_step_s(s, 0.0, idle_step_s=0.5) == lm.shared_step_s(s, 0.0)
