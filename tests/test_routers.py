"""Each router places requests by its own rule over the same candidates."""

from __future__ import annotations

from sage_cp_plugin.routing import (
    AffinityRouter,
    KVAwareRouter,
    LoadBalancedRouter,
    LocalityRouter,
    PDRoutingStrategy,
    PrefixAwareRouter,
    RoundRobinRouter,
)
from sage_cp_plugin.types import ExecutionInstanceType, PDSeparationConfig, RequestMetadata
from tests.helpers import fleet, item, state


def test_round_robin_cycles() -> None:
    cands = [state("a"), state("b"), state("c")]
    r = RoundRobinRouter()
    picks = [r.select(item(i), cands, fleet(*cands)).instance_id for i in range(6)]  # type: ignore[union-attr]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_load_balanced_uses_in_flight_and_scraped_queue() -> None:
    a, b, c = state("a", in_flight=5), state("b", in_flight=1), state("c", in_flight=3)
    r = LoadBalancedRouter()
    assert r.select(item(1), [a, b, c], fleet(a, b, c)) is b
    # vLLM reports 9 waiting on b: its real load is higher than our in-flight count.
    b.scraped.waiting, b.scraped.fresh = 9, True
    assert r.select(item(2), [a, b, c], fleet(a, b, c)) is c
    # Stale scrapes are not trusted.
    b.scraped.fresh = False
    assert r.select(item(3), [a, b, c], fleet(a, b, c)) is b


def test_power_of_two_never_picks_the_most_loaded() -> None:
    cands = [state("a", in_flight=0), state("b", in_flight=1), state("hot", in_flight=9)]
    r = LoadBalancedRouter(power_of_two=True, seed=1)
    picks = {r.select(item(i), cands, fleet(*cands)).instance_id for i in range(200)}  # type: ignore[union-attr]
    assert "hot" not in picks and picks == {"a", "b"}


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


def test_prefix_aware_routes_to_cached_prefix_until_overloaded() -> None:
    cands = [state("a"), state("b"), state("c")]
    f = fleet(*cands)
    r = PrefixAwareRouter(chunk_chars=32, balance_abs_threshold=6)
    doc = "".join(f"line {k} of a long shared system prompt. " for k in range(40))
    first_item = item(1, prompt=doc + "Q1")
    home = r.select(first_item, cands, f)
    assert home is not None
    r.on_dispatch(first_item, home)
    home.in_flight = 1
    again = item(2, prompt=doc + "a different question")
    assert r.select(again, cands, f) is home  # cache hit beats a slightly higher load
    # A new prefix goes to the least loaded, not the cache holder.
    other = r.select(item(3, prompt="completely different text " * 20), cands, f)
    assert other is not home
    # Hot prefix: when the holder is far busier than the rest, load wins.
    home.in_flight = 9
    assert r.select(item(4, prompt=doc + "Q4"), cands, f) is not home


def test_kv_aware_prefers_free_kv_and_short_queue() -> None:
    a, b = state("a", in_flight=2), state("b", in_flight=2)
    for s, kv, waiting in ((a, 0.95, 4), (b, 0.20, 0)):
        s.scraped.kv_usage, s.scraped.waiting, s.scraped.fresh = kv, waiting, True
    r = KVAwareRouter()
    assert r.select(item(1), [a, b], fleet(a, b)) is b
    assert r.select(item(2), [b, a], fleet(a, b)) is b
    # Stale scrapes are not trusted: b's old low KV reading no longer attracts traffic,
    # our own in-flight counts decide.
    a.scraped.fresh = b.scraped.fresh = False
    b.in_flight = 5
    assert r.select(item(3), [a, b], fleet(a, b)) is a
    assert r.select(item(4), [b, a], fleet(a, b)) is a


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
