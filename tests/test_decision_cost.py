"""The decision-cost optimisations change no decision.

`load_model.candidate_times` (one call per decision), `predicted.pick_lowest_ttft` (built
on it) and `Dispatcher.routable_and_free` (one pass for routable + has_room) are compared
with the straightforward code they replace, kept here verbatim as the reference, on many
random fleet views: the same floats exactly (the arithmetic is the same, in the same order)
and the same instance chosen, including the tie-breaks (fleets are drawn from a few
templates so that equal candidates are common).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from sage_cp_plugin import load_model as lm
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
from sage_cp_plugin.routing.predicted import pick_lowest_ttft
from sage_cp_plugin.routing.prefix_index import chunk_hashes, local_chunk_keys
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import DecodingConfig, ExecutionInstance, PrefillingConfig
from tests.helpers import item


def reference_pick(
    item: QueuedRequest,
    candidates: Sequence[InstanceState],
    cached: Sequence[int] | None,
    now: float,
) -> InstanceState | None:
    """`pick_lowest_ttft` as it was before the decision-cost work (one function per term)."""
    n = len(candidates)
    if n == 0:
        return None
    start = item.seq % n
    tokens = item.input_tokens
    best: InstanceState | None = None
    best_t = best_cost = best_step = 0.0
    best_own = 0
    for i in range(n):
        j = (start + i) % n
        c = candidates[j]
        own = tokens - (cached[j] if cached is not None else 0)
        t = lm.predicted_ttft_s(c, own, now)
        if best is None:
            best, best_t, best_step, best_own = c, t, lm.decode_step_s(c), own
            best_cost = lm.cost_to_running_s(c, own, now)
            continue
        step = lm.decode_step_s(c)
        tol = step if step < best_step else best_step
        if t < best_t - tol:
            best, best_t, best_step, best_own = c, t, step, own
            best_cost = lm.cost_to_running_s(c, own, now)
        elif t <= best_t + tol:
            cost = lm.cost_to_running_s(c, own, now)
            if cost < best_cost or (cost == best_cost and own < best_own):
                best, best_t, best_step, best_cost, best_own = c, t, step, cost, own
    return best


def random_state(rng: random.Random, iid: str, template: int, now: float) -> InstanceState:
    """An instance with a random history; equal `template`s give equal states."""
    r = random.Random(template)
    meta: dict[str, object] = {}
    if r.random() < 0.5:
        meta["max_num_batched_tokens"] = r.choice([256, 2048, 8192.0, 0, "x"])
    inst = ExecutionInstance(
        instance_id=iid,
        port=8000,
        model_name="m",
        speed_hint=r.choice([0.5, 1.0, 3.0]),
        metadata=meta,
    )
    st = InstanceState(instance=inst)
    if r.random() < 0.7:
        st.prefill_s_per_token.add(r.uniform(1e-5, 2e-4))
    if r.random() < 0.7:
        st.decode_s_per_token.add(r.uniform(0.005, 0.05))
    bookings = []
    for _ in range(r.randrange(0, 8)):
        at = r.uniform(0.0, now)
        bookings.append(lm.book(st, r.randrange(1, 9000), 50, r.randrange(0, 3000), at))
    for b in bookings:
        x = r.random()
        if x < 0.3:
            lm.first_token(b, min(now, b.booked_at + r.uniform(0.0, 2.0)))
        elif x < 0.45:
            lm.release(b, now)
    if r.random() < 0.5:
        s = st.scraped
        s.fresh = r.random() < 0.8
        s.running, s.waiting = float(r.randrange(0, 20)), float(r.randrange(0, 20))
        s.ours_at_scrape = r.randrange(0, 20)
        s.scraped_at = now - r.uniform(0.0, 4.0)
        s.interval_s = r.choice([0.0, 0.5, 1.0, 2.0])
    if r.random() < 0.3:
        st.peer_prefill_tokens = r.uniform(0, 5000)
        st.peer_seqs = r.randrange(0, 10)
    return st


def test_fused_terms_and_pick_equal_the_reference_on_random_views() -> None:
    rng = random.Random(7)
    ties = 0
    for trial in range(1500):
        now = rng.uniform(0.0, 10.0)
        n = rng.randrange(1, 14)
        templates = [rng.randrange(0, 4 if trial % 2 else 10_000) for _ in range(n)]
        states = [random_state(rng, f"i{k}", t, now) for k, t in enumerate(templates)]
        it = item(rng.randrange(0, 1000), prompt="p" * rng.randrange(1, 40_000))
        cached = None
        if rng.random() < 0.6:
            cached = [
                rng.choice([0, 0, it.input_tokens, rng.randrange(0, it.input_tokens + 5)])
                for _ in states
            ]
        owns = [it.input_tokens - (cached[k] if cached is not None else 0) for k in range(n)]
        ttfts, steps, costs = lm.candidate_times(states, owns, now)
        for k, st in enumerate(states):
            assert ttfts[k] == lm.predicted_ttft_s(st, owns[k], now)
            assert steps[k] == lm.decode_step_s(st)
            assert costs[k] == lm.cost_to_running_s(st, owns[k], now)
        chosen = pick_lowest_ttft(it, states, cached, now)
        assert chosen is reference_pick(it, states, cached, now)
        ties += len(set(templates)) < n
    assert ties > 500  # equal candidates were common: the tie-breaks were exercised


def _manager(seed: int, *, limits: bool, headroom: float) -> ControlPlaneManager:
    """A coordinator (not started: no server, no task) with a random fleet."""
    m = ControlPlaneManager(adaptive_concurrency=limits, urgent_headroom=headroom)
    r = random.Random(seed)
    for k in range(r.randrange(1, 12)):
        inst = ExecutionInstance(
            instance_id=f"i{k}",
            port=8000 + k,
            model_name=r.choice(["m", "m", "other"]),
            max_concurrent_requests=r.randrange(1, 6),
            prefilling_config=r.choice(
                [None, PrefillingConfig(enable_chunked_prefill=False, max_chunk_size_tokens=500)]
            ),
            decoding_config=r.choice([None, DecodingConfig(target_latency_ms=20.0)]),
        )
        m.register_instance(inst)
        st = m.fleet.states[inst.instance_id]
        st.healthy = r.random() < 0.85
        st.draining = r.random() < 0.1
        st.in_flight = r.randrange(0, 7)
        st.peer_in_flight = r.randrange(0, 2)
        if r.random() < 0.5:
            st.decode_s_per_token.add(r.choice([0.01, 0.02, 0.03]))
        for _ in range(r.randrange(0, 3)):
            lm.book(st, r.randrange(1, 3000), 10, 0, 0.0)
    return m


def test_fused_routable_and_free_equal_the_reference_on_random_fleets() -> None:
    rng = random.Random(11)
    seen_free = seen_excluded_fallback = 0
    for seed in range(600):
        limits, headroom = rng.random() < 0.3, rng.choice([0.0, 0.5])
        fused, ref = (_manager(seed, limits=limits, headroom=headroom) for _ in range(2))
        it = item(seed, prompt="w" * rng.choice([100, 4000]), model_name=rng.choice(["m", None]))
        it.urgent = rng.random() < 0.3
        if rng.random() < 0.3:
            it.excluded = {f"i{k}" for k in range(rng.randrange(0, 12))}
        routable, free = fused.dispatcher.routable_and_free(it)
        d = ref.dispatcher
        ref_routable = d.routable(it)
        ref_free = [s for s in ref_routable if d.has_room(s, it)]
        assert [s.instance_id for s in routable] == [s.instance_id for s in ref_routable]
        assert [s.instance_id for s in free] == [s.instance_id for s in ref_free]
        seen_free += bool(free) and len(free) < len(routable)
        seen_excluded_fallback += bool(routable) and all(
            s.instance_id in it.excluded for s in routable
        )
    assert seen_free > 50 and seen_excluded_fallback > 5


def reference_chunk_hashes(text: str, chunk_chars: int, max_chunks: int) -> list[bytes]:
    out: list[bytes] = []
    prev = b""
    for i in range(min(len(text) // chunk_chars, max_chunks)):
        chunk = text[i * chunk_chars : (i + 1) * chunk_chars].encode()
        prev = hashlib.blake2b(prev + chunk, digest_size=8).digest()
        out.append(prev)
    return out


def test_chunk_hashes_equal_the_reference_for_ascii_and_other_text() -> None:
    rng = random.Random(3)
    for _ in range(300):
        alphabet = rng.choice(["ab c\n", "aé€😀 "])
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 3000)))
        size, most = rng.choice([1, 7, 256]), rng.choice([0, 3, 512])
        assert chunk_hashes(text, size, most) == reference_chunk_hashes(text, size, most)


def test_approximate_cached_tokens_equal_the_reference() -> None:
    rng = random.Random(5)
    hits = 0
    for trial in range(200):
        view = ApproximatePrefixCache(chunk_chars=16)
        states = [random_state(rng, f"i{k}", k, 1.0) for k in range(rng.randrange(1, 9))]
        base = "".join(rng.choice("abc") for _ in range(64))
        for k, st in enumerate(states):  # instances hold prefixes of different lengths
            if rng.random() < 0.6:
                view.on_dispatch(
                    item(1000 + k, prompt=base[: rng.randrange(0, 64)]), st.instance_id
                )
        it = item(trial, prompt=base + "tail" * rng.randrange(0, 30))
        hashes, per_chunk = view._hashes(it)
        matched = view.index.match(hashes)
        cap = it.input_tokens
        expected = [min(cap, int(matched.get(c.instance_id, 0) * per_chunk)) for c in states]
        assert view.cached_tokens(it, states) == expected
        hits += any(expected)
    assert hits > 50  # prefixes were found: the matched path was compared


def test_local_chunk_keys_tell_prefixes_apart_as_the_portable_digests_do() -> None:
    """The process-local keys (`prefix_index.local_chunk_keys`) and the digests replicas
    exchange (`chunk_hashes`) are equal for exactly the same chunks of two prompts: equal
    keys mean equal prefixes up to that chunk, so the index matches the same prompts."""
    rng = random.Random(11)
    compared = equal = 0
    for _ in range(300):
        alphabet = rng.choice(["ab c\n", "aé€😀 "])
        base = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 2000)))
        a = base[: rng.randrange(0, len(base) + 1)] + "".join(
            rng.choice(alphabet) for _ in range(rng.randrange(0, 500))
        )
        b = base + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 500)))
        if rng.random() < 0.2:  # the same chunk text at another position is another key
            b = b[7:]
        size, most = rng.choice([1, 7, 64]), rng.choice([0, 3, 512])
        la, lb = local_chunk_keys(a, size, most), local_chunk_keys(b, size, most)
        da, db = chunk_hashes(a, size, most), chunk_hashes(b, size, most)
        assert len(la) == len(da) and len(lb) == len(db)
        assert [x == y for x, y in zip(la, lb, strict=False)] == [
            x == y for x, y in zip(da, db, strict=False)
        ]
        compared += min(len(la), len(lb))
        equal += sum(x == y for x, y in zip(la, lb, strict=False))
    assert equal > 1000 and compared - equal > 1000  # shared and diverging chunks both seen


def test_approximate_view_answers_again_after_the_index_changes() -> None:
    """A request asked about twice (its decision, then its booking) gets the index's answer
    of the moment: a dispatch or a removed instance in between is seen."""
    view = ApproximatePrefixCache(chunk_chars=16)
    states = [
        InstanceState(
            instance=ExecutionInstance(instance_id=f"i{k}", port=8000 + k, model_name="m")
        )
        for k in range(2)
    ]
    base = "abcdefghijklmnop" * 8
    it = item(1, prompt=base + "tail")
    assert view.cached_tokens(it, states) == [0, 0]
    view.on_dispatch(item(2, prompt=base), "i1")
    first = view.cached_tokens(it, states)
    assert first[0] == 0 and first[1] > 0
    assert view.cached_tokens(it, states) == first  # unchanged index: the same answer
    view.on_instance_removed("i1")
    assert view.cached_tokens(it, states) == [0, 0]
