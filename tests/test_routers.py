"""Each router places requests by its own rule over the same candidates."""

from __future__ import annotations

import pytest

from sage_cp_plugin import load_model as lm
from sage_cp_plugin.routing import (
    AffinityRouter,
    KVAwareRouter,
    LoadBalancedRouter,
    LocalityRouter,
    PDRoutingStrategy,
    PrefixAwareRouter,
    RoundRobinRouter,
)
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import ExecutionInstanceType, PDSeparationConfig, RequestMetadata
from tests.helpers import fleet, item, state


def test_round_robin_cycles() -> None:
    cands = [state("a"), state("b"), state("c")]
    r = RoundRobinRouter()
    picks = []
    for i in range(6):
        chosen = r.select(item(i), cands, fleet(*cands))
        assert chosen is not None
        assert r.select(item(i), cands, fleet(*cands)) is chosen  # asking again: same answer
        r.on_dispatch(item(i), chosen)  # the cursor moves when the request is sent
        picks.append(chosen.instance_id)
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_load_balanced_counts_prefill_tokens_not_requests() -> None:
    a, b, c = state("a"), state("b"), state("c")
    lm.book(a, 8000, 10, 0, now=0.0)  # one long prompt still prefilling
    for _ in range(3):
        lm.book(b, 50, 10, 0, now=0.0)  # three short ones
    lm.book(c, 2000, 10, 0, now=0.0)
    r = LoadBalancedRouter()
    assert r.select(item(1, prompt="x" * 400), [a, b, c], fleet(a, b, c)) is b
    # vLLM reports a long queue on b that is not ours: the residual moves traffic away.
    b.scraped.running, b.scraped.waiting, b.scraped.fresh = 3, 40, True
    b.scraped.ours_at_scrape, b.scraped.interval_s = 3, 1.0
    assert r.select(item(2, prompt="x" * 400), [a, b, c], fleet(a, b, c)) is c
    # Stale scrapes are not trusted.
    b.scraped.fresh = False
    assert r.select(item(3, prompt="x" * 400), [a, b, c], fleet(a, b, c)) is b


def test_load_balanced_spreads_a_burst_of_equal_requests() -> None:
    cands = [state(f"i{k}") for k in range(4)]
    r = LoadBalancedRouter()
    f = fleet(*cands)
    counts = dict.fromkeys((c.instance_id for c in cands), 0)
    for k in range(12):
        it = item(k, prompt="short question " * 4)
        chosen = r.select(it, cands, f)
        assert chosen is not None
        lm.book(chosen, it.input_tokens, it.output_tokens, 0, now=0.0)
        counts[chosen.instance_id] += 1
    assert set(counts.values()) == {3}  # no herd onto one instance


def test_power_of_two_never_picks_the_most_loaded() -> None:
    cands = [state("a"), state("b"), state("hot")]
    lm.book(cands[1], 500, 10, 0, now=0.0)
    lm.book(cands[2], 16000, 10, 0, now=0.0)
    r = LoadBalancedRouter(power_of_two=True, seed=1)
    picks = {r.select(item(i), cands, fleet(*cands)).instance_id for i in range(200)}  # type: ignore[union-attr]
    assert "hot" not in picks and picks == {"a", "b"}
    # A pure decision: the same request in the same state gets the same answer.
    assert r.select(item(7), cands, fleet(*cands)) is r.select(item(7), cands, fleet(*cands))


def test_affinity_is_sticky_per_user_and_bounded() -> None:
    cands = [state(f"i{k}") for k in range(4)]
    r = AffinityRouter(epsilon=0.25)
    f = fleet(*cands)
    first = r.select(item(1, user_id="alice"), cands, f)
    assert all(r.select(item(i, user_id="alice"), cands, f) is first for i in range(2, 20))
    users = {r.select(item(i, user_id=f"user{i}"), cands, f).instance_id for i in range(200)}  # type: ignore[union-attr]
    assert len(users) == 4  # many users spread over every instance
    # A hot user: its home instance is far above the (1+eps) * mean bound -> moves on.
    assert first is not None
    first.in_flight = 8
    moved = r.select(item(99, user_id="alice"), cands, f)
    assert moved is not first


def test_locality_follows_the_prompt_prefix() -> None:
    cands = [state(f"i{k}") for k in range(4)]
    r = LocalityRouter(prefix_chars=64)
    shared = "You are a helpful assistant. " * 4
    f = fleet(*cands)
    homes = {
        r.select(item(i, prompt=shared + f"question {i}"), cands, f).instance_id  # type: ignore[union-attr]
        for i in range(30)
    }
    assert len(homes) == 1
    spread = {
        r.select(item(i, prompt=f"{i} unrelated prompt " * 8), cands, f).instance_id  # type: ignore[union-attr]
        for i in range(60)
    }
    assert len(spread) > 1


def _one_request_each_home_holds_a_long_prefill(cands: list[InstanceState], home_id: str) -> None:
    # Every instance holds one request (equal counts, so the ring's bounded load keeps the
    # home), but the home's is a 16k-token prompt still prefilling and the others' are short.
    for c in cands:
        lm.book(c, 16000 if c.instance_id == home_id else 100, 10, 0, now=0.0)
        c.in_flight = 1


def test_affinity_home_gives_way_when_its_prefill_queue_costs_more_than_a_step() -> None:
    cands = [state(f"i{k}") for k in range(4)]
    r = AffinityRouter(epsilon=0.25)
    f = fleet(*cands)
    home = r.select(item(1, user_id="alice"), cands, f)
    assert home is not None
    # Idle fleet: the user stays on its home (sticky), every time.
    assert all(r.select(item(i, user_id="alice"), cands, f) is home for i in range(2, 10))
    _one_request_each_home_holds_a_long_prefill(cands, home.instance_id)
    moved = r.select(item(11, user_id="alice"), cands, f)
    assert moved is not None and moved is not home
    # Requests without a user go by predicted TTFT too (not by a count of requests, which
    # is equal everywhere here).
    assert r.select(item(12), cands, f) is not home


def test_locality_home_gives_way_when_its_prefill_queue_costs_more_than_a_step() -> None:
    cands = [state(f"i{k}") for k in range(4)]
    r = LocalityRouter(prefix_chars=64)
    f = fleet(*cands)
    shared = "You are a helpful assistant. " * 4
    home = r.select(item(1, prompt=shared + "q1"), cands, f)
    assert home is not None
    _one_request_each_home_holds_a_long_prefill(cands, home.instance_id)
    moved = r.select(item(2, prompt=shared + "q2"), cands, f)
    assert moved is not None and moved is not home
    # A short queue on the home (less than a decode step of predicted TTFT) keeps it.
    calm = [state(f"i{k}") for k in range(4)]
    home2 = r.select(item(3, prompt=shared + "q3"), calm, fleet(*calm))
    assert home2 is not None
    lm.book(home2, 100, 10, 0, now=0.0)
    assert r.select(item(4, prompt=shared + "q4"), calm, fleet(*calm)) is home2


def test_prefix_aware_routes_to_cached_prefix_until_its_queue_costs_more() -> None:
    cands = [state("a"), state("b"), state("c")]
    view = ApproximatePrefixCache(chunk_chars=32)
    f = fleet(*cands)
    f.cache_view = view
    r = PrefixAwareRouter()
    doc = "".join(f"line {k} of a long shared system prompt. " for k in range(400))
    first_item = item(1, prompt=doc + "Q1")
    home = r.select(first_item, cands, f)
    assert home is not None
    assert r.select(first_item, cands, f) is home  # select has no side effect...
    assert view.cached_tokens(first_item, cands) == [0, 0, 0]  # ...and taught the view nothing
    view.on_dispatch(first_item, home.instance_id)  # the dispatch hook does
    lm.first_token(lm.book(home, first_item.input_tokens, 10, 0, now=0.0), now=0.0)
    lm.book(home, 300, 10, 0, now=0.0)  # a short prompt queued there
    again = item(2, prompt=doc + "a different question")
    # A cache hit beats waiting behind a short queue...
    assert r.select(again, cands, f) is home
    # ...a new prefix goes where nothing is queued...
    assert r.select(item(3, prompt="completely different text " * 20), cands, f) is not home
    # ...and a hot prefix moves on when the queue there costs more than recomputing it.
    for _ in range(4):
        lm.book(home, 4000, 10, 0, now=0.0)
    assert r.select(item(4, prompt=doc + "Q4"), cands, f) is not home


def test_prefix_aware_keeps_a_short_cached_prefix_when_the_saving_is_below_a_step() -> None:
    # On a fast engine a cached prefix may save less TTFT than one decode step (a tie by
    # time); the fleet still skips recomputing it, so the cache holder takes the tie.
    cands = [state("a"), state("b")]
    view = ApproximatePrefixCache(chunk_chars=32)
    f = fleet(*cands)
    f.cache_view = view
    r = PrefixAwareRouter()
    doc = "".join(f"short shared line {k}. " for k in range(12))
    placed = []
    for k in range(6):
        it = item(k, prompt=doc + f"question {k}")
        chosen = r.select(it, cands, f)
        assert chosen is not None
        view.on_dispatch(it, chosen.instance_id)
        placed.append(chosen.instance_id)
    assert len(set(placed)) == 1, placed
    # Without a shared prefix, the same sequence of requests takes turns (no herd).
    other = [r.select(item(10 + k, prompt=f"unrelated text {k} " * 8), cands, f) for k in range(4)]
    assert {c.instance_id for c in other if c is not None} == {"a", "b"}


def test_kv_aware_avoids_an_instance_whose_kv_would_overflow() -> None:
    a = state("a", metadata={"kv_capacity_tokens": 10_000})
    b = state("b", metadata={"kv_capacity_tokens": 10_000})
    r = KVAwareRouter()
    lm.book(b, 500, 10, 0, now=0.0)  # b has a short queue, a none
    assert r.select(item(1), [a, b], fleet(a, b)) is a
    # vLLM reports a nearly full KV cache on a: a request of 1k tokens does not fit there.
    a.scraped.kv_usage, a.scraped.fresh = 0.95, True
    big = item(2, prompt="word " * 800)
    assert r.select(big, [a, b], fleet(a, b)) is b
    assert r.select(big, [b, a], fleet(a, b)) is b
    # Stale scrapes are not trusted: our own (empty) view of a decides again.
    a.scraped.fresh = False
    assert r.select(big, [a, b], fleet(a, b)) is a


def test_pd_phase_from_estimated_input_tokens() -> None:
    pd = PDRoutingStrategy(
        PDSeparationConfig(routing_policy="threshold", prefilling_threshold_input_tokens=100)
    )
    long_prompt = RequestMetadata(prompt="word " * 200, max_tokens=400)  # ~250 tokens
    short_prompt = RequestMetadata(prompt="hi there", max_tokens=200)
    assert pd.determine_request_phase(long_prompt) is ExecutionInstanceType.PREFILLING
    assert pd.determine_request_phase(short_prompt) is ExecutionInstanceType.DECODING
    off = PDRoutingStrategy(PDSeparationConfig(enabled=False))
    assert off.determine_request_phase(long_prompt) is ExecutionInstanceType.HYBRID


def test_pd_specialisation_prefers_role_then_general() -> None:
    pre = state("pre", instance_type="prefilling")
    dec = state("dec", instance_type="decoding")
    gen = state("gen")
    pd = PDRoutingStrategy()
    assert pd.filter_by_phase([pre, dec, gen], ExecutionInstanceType.PREFILLING) == [pre]
    assert pd.filter_by_phase([pre, dec, gen], ExecutionInstanceType.DECODING) == [dec]
    assert pd.filter_by_phase([dec, gen], ExecutionInstanceType.PREFILLING) == [gen]
    assert pd.filter_by_phase([dec], ExecutionInstanceType.PREFILLING) == [dec]
    assert PDRoutingStrategy.get_instance_specialization(pre.instance)["prefilling_score"] == 1.0


def test_prefix_aware_added_latency_spares_an_instance_full_of_decodes() -> None:
    # a: nothing queued, 40 sequences decoding; b: a short prompt queued, nothing decoding.
    a, b = state("a"), state("b")
    for _ in range(40):
        lm.first_token(lm.book(a, 200, 50, 0, now=0.0), now=0.0)
    lm.book(b, 1000, 10, 0, now=0.0)
    req = item(1, prompt="words of a long prompt " * 400)
    f = fleet(a, b)
    ttft_a, ttft_b = (lm.predicted_ttft_s(s, req.input_tokens, 0.0) for s in (a, b))
    assert ttft_b - ttft_a > lm.decode_step_s(a)  # a is faster to first token by over a step
    # Least TTFT (the default) takes a; its prefill would stall 40 decodes there.
    assert PrefixAwareRouter().select(req, [a, b], f) is a
    # Own TTFT plus the delay added to the running sequences: b adds less latency in all.
    cost_a, cost_b = (lm.cost_to_running_s(s, req.input_tokens, 0.0) for s in (a, b))
    assert ttft_b + cost_b < ttft_a + cost_a
    r = PrefixAwareRouter(score="added_latency")
    assert r.select(req, [a, b], f) is b
    assert r.select(req, [b, a], f) is b  # not the candidates' order
    # With nothing running anywhere it is least TTFT again.
    c, d = state("c"), state("d")
    lm.book(d, 1000, 10, 0, now=0.0)
    assert r.select(req, [c, d], fleet(c, d)) is c


def test_prefix_aware_rejects_an_unknown_score() -> None:
    with pytest.raises(ValueError, match="score must be one of ttft, added_latency"):
        PrefixAwareRouter(score="fastest")


def test_prefix_aware_added_latency_slack_trades_only_within_the_ttft_objective() -> None:
    # Same fleet as above: a is faster to first token, b adds less latency to the fleet.
    a, b = state("a"), state("b")
    for _ in range(40):
        lm.first_token(lm.book(a, 200, 50, 0, now=0.0), now=0.0)
    lm.book(b, 1000, 10, 0, now=0.0)
    prompt = "words of a long prompt " * 400
    probe = item(1, prompt=prompt)
    ttft_a, ttft_b = (lm.predicted_ttft_s(s, probe.input_tokens, 0.0) * 1000 for s in (a, b))
    r = PrefixAwareRouter(score="added_latency_slack")
    f = fleet(a, b)
    # b meets a loose objective: the added-latency cost decides, b.
    assert r.select(item(1, prompt=prompt, ttft_slo_ms=ttft_b * 2), [a, b], f) is b
    # Only a meets a tight one: b's lower cost is not bought with a TTFT miss, a.
    tight = (ttft_a + ttft_b) / 2
    assert r.select(item(1, prompt=prompt, ttft_slo_ms=tight), [a, b], f) is a
    # No objective: least TTFT, a.
    assert r.select(item(1, prompt=prompt), [a, b], f) is a
