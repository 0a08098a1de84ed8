"""The load of an instance in tokens, and the TTFT a new request would see there.

TTFT on a vLLM engine is set by the prefill work queued ahead of a request, not by how many
requests it holds: ten short chats cost less than one 16k-token document. So the coordinator
keeps, per instance, exactly what it sent and what came back (`InstanceState` holds the
numbers, this module changes them and predicts from them):

- outstanding prefill: the uncached prompt tokens of its requests still waiting for their
  first token (booked at dispatch with the cache view's estimate of cached tokens, released
  at the first streamed token, on failure or on cancellation);
- active decodes: requests past their first token, and their KV footprint in tokens;
- speeds, learned from what streams back (EWMA, priors from the instance's `speed_hint`):
  seconds per prefill token (from the TTFT of each request against the work that was ahead
  of it) and the decode step time (its TPOT).

The engine serves its waiting queue in arrival order and has been prefilling since the last
first token it produced, so the head request is partly done: the estimate drains the head at
the learned speed (never below zero, never past the head's own tokens).

`predicted_ttft_s` = time to prefill the work ahead plus the request's own uncached tokens,
where each chunked-prefill step also carries a decode step for the running sequences. Peers
do the same in their units: Dynamo's KV router cost (prefill blocks weighted by overlap plus
active decode blocks), llm-d's queue and KV-utilisation scorers, Llumnix's virtual usage.
Here it is seconds, so there is nothing to weight.

Scraped `/metrics` corrects the model only for work that did not come through us: the
residual is what vLLM reports (running + waiting) beyond our own requests at scrape time,
clamped at zero (our own requests are never counted twice); its waiting part counts as
prefill ahead (at the mean prompt we have seen), its running part as sequences the new
prefill would delay. It fades linearly to nothing over two scrape intervals, so a number
that is a scrape old weighs little and one that was not refreshed stops steering traffic.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from sage_cp_plugin.state import InstanceState

# Priors before any observation, scaled by `speed_hint` (1.0 ~ an 8B model on one A100).
PRIOR_PREFILL_S_PER_TOKEN = 5e-5
PRIOR_DECODE_STEP_S = 0.02
# vLLM's default chunked-prefill token budget per step; an instance may state its own as
# `metadata["max_num_batched_tokens"]`.
DEFAULT_CHUNK_TOKENS = 8192


@dataclass(slots=True, eq=False)
class Booking:
    """One request's share of an instance's load, from dispatch until it ends."""

    state: InstanceState
    prefill_tokens: int  # uncached prompt tokens still to prefill
    kv_tokens: int  # prompt + expected output: its KV footprint while decoding
    booked_at: float
    work_ahead: float  # prefill tokens ahead of it plus its own, at dispatch
    # False for the decode leg of a disaggregated request: its first token comes after
    # another instance's prefill and the KV pull, so it says nothing of this one's speed.
    learns: bool = True
    prefilling: bool = True
    released: bool = False
    # When its first token is due (arrival + TTFT objective); None without one, or once
    # demoted (its objective was given up: it no longer holds other work back).
    first_token_due: float | None = None


def chunk_tokens(state: InstanceState) -> int:
    return state.instance.batched_tokens_hint or DEFAULT_CHUNK_TOKENS


def prefill_s_per_token(state: InstanceState) -> float:
    return state.prefill_s_per_token.get(PRIOR_PREFILL_S_PER_TOKEN / state.instance.speed_hint)


def decode_step_s(state: InstanceState) -> float:
    return state.decode_s_per_token.get(PRIOR_DECODE_STEP_S / state.instance.speed_hint)


def _drain_head(state: InstanceState, now: float) -> float:
    """Tokens of the head request the engine has prefilled since it became the head."""
    queue: deque[Booking] = state.prefill_queue
    while queue and not queue[0].prefilling:
        queue.popleft()
    if not queue:
        return 0.0
    head = queue[0]
    elapsed = now - max(state.prefill_head_since, head.booked_at)
    if elapsed <= 0:
        return 0.0
    per_token = prefill_s_per_token(state) + decode_step_s(state) / chunk_tokens(state)
    return min(float(head.prefill_tokens), elapsed / per_token)


def _foreign(state: InstanceState, now: float) -> tuple[float, float]:
    """(waiting, running) requests vLLM reported beyond ours at the last scrape, weighted
    down linearly as the scrape ages: full when fresh, nothing two intervals later (a late
    scrape must not make the correction vanish before the next one refreshes it)."""
    s = state.scraped
    if not s.fresh:
        return 0.0, 0.0
    foreign = s.running + s.waiting - s.ours_at_scrape
    if foreign <= 0:
        return 0.0, 0.0
    span = 2.0 * (s.interval_s if s.interval_s > 0 else 1.0)
    weight = 1.0 - (now - s.scraped_at) / span
    if weight <= 0:
        return 0.0, 0.0
    waiting = min(foreign, s.waiting)
    return waiting * weight, (foreign - waiting) * weight


def residual_tokens(state: InstanceState, now: float) -> float:
    """Prefill work waiting on the instance that did not come through us, in tokens."""
    waiting, _ = _foreign(state, now)
    # Work not sent by us: assume its prompts are like ours (the mean uncached prompt here).
    return waiting * state.mean_prompt_tokens.get(1024.0) if waiting else 0.0


def own_prefill_ahead(state: InstanceState, now: float) -> float:
    """Prefill tokens this coordinator sent that the instance has not prefilled yet (what a
    replica publishes to its peers, `fleetshare`)."""
    return max(0.0, state.prefill_tokens_queued - _drain_head(state, now))


def waiting_due(state: InstanceState, now: float) -> list[tuple[float, float]]:
    """(prefill tokens up to and including it, first-token due time) of each request still
    prefilling on `state` that carries a TTFT objective, in the order it was sent: what
    `ttft_reserve.keeps_due` checks a new request against."""
    out: list[tuple[float, float]] = []
    ahead = state.peer_prefill_tokens + residual_tokens(state, now) - _drain_head(state, now)
    for b in state.prefill_queue:
        if not b.prefilling:
            continue
        ahead += b.prefill_tokens
        if b.first_token_due is not None:
            out.append((max(0.0, ahead), b.first_token_due))
    return out


def prefill_ahead(state: InstanceState, now: float) -> float:
    """Prefill tokens a request dispatched now would wait behind."""
    ahead = state.prefill_tokens_queued - _drain_head(state, now)
    return max(0.0, ahead) + state.peer_prefill_tokens + residual_tokens(state, now)


def prefill_time_s(state: InstanceState, tokens: float) -> float:
    """Seconds to prefill `tokens`: chunked steps, each also paying one decode step."""
    if tokens <= 0:
        return 0.0
    steps = math.ceil(tokens / chunk_tokens(state))
    return tokens * prefill_s_per_token(state) + steps * decode_step_s(state)


def queue_wait_s(state: InstanceState, now: float) -> float:
    """Predicted wait before a request dispatched here now starts its own prefill: the
    prefill ahead of it. What the dispatcher compares instances by and what the split
    decision calls the prefill pool's wait."""
    return prefill_time_s(state, prefill_ahead(state, now))


def shared_step_s(state: InstanceState, now: float, idle_step_s: float | None = None) -> float:
    """The step a sequence decoding here would see while the instance works through the
    prefill queued on it: the decode step plus one chunk of that prefill (at most the chunk
    budget). A persistence forecast: the queue the instance holds now is taken to last the
    few steps of a short answer. On an instance fed a stream of long prompts (a prefill
    instance) it does; a decode step alone would predict a 10-token answer there at a
    fraction of the full-chunk steps it actually gets.

    `idle_step_s`: a decode step measured without long prefills beside it (on the decode
    instances of a disaggregated fleet), for an instance whose own learnt step was measured
    beside full chunks (a prefill instance's few whole requests decode between its split
    prompts' chunks): its learnt step then holds a chunk already, and with nothing queued
    would still predict one. The step is then drawn between the two ends the fleet
    measures: `idle_step_s` with no prefill queued, the full-chunk step this instance's
    own speeds predict (`prefill_time_s` of a chunk, what its TTFTs are learnt from) with
    a chunk or more. Used only when lower than the instance's own step (which includes
    whatever ran beside it, so bounds a step without prefill from above)."""
    ahead = prefill_ahead(state, now)
    chunk = chunk_tokens(state)
    step = decode_step_s(state)
    if idle_step_s is None or idle_step_s >= step:
        return step + min(ahead, chunk) * prefill_s_per_token(state)
    full = prefill_time_s(state, chunk)
    return idle_step_s + min(ahead, chunk) / chunk * (full - idle_step_s)


def unloaded_ttft_s(state: InstanceState, uncached_tokens: int) -> float:
    """TTFT of a request with nothing ahead of it: its own prefill at the learnt speed (at
    least one step). The adaptive concurrency limit's reference: TTFT beyond it is queueing."""
    return prefill_time_s(state, max(1, uncached_tokens))


def predicted_ttft_s(state: InstanceState, uncached_tokens: int, now: float) -> float:
    """Time to first token of a request with `uncached_tokens` to prefill, sent here now."""
    return prefill_time_s(state, prefill_ahead(state, now) + max(1, uncached_tokens))


def cost_to_running_s(state: InstanceState, uncached_tokens: int, now: float) -> float:
    """Delay the request's prefill adds to the requests running here, summed over them
    (those still prefilling are about to decode: they count, or a burst of short requests
    would all pick the instance whose newest arrivals have not decoded yet; so do requests
    vLLM runs that did not come through us)."""
    seqs = state.decode_seqs + state.prefill_seqs + state.peer_seqs + _foreign(state, now)[1]
    return seqs * max(1, uncached_tokens) * prefill_s_per_token(state)


def scrape_correction(state: InstanceState, now: float) -> tuple[float, float]:
    """(`residual_tokens`, running part of `_foreign`): the scrape's correction as
    `candidate_times` adds it, with the same arithmetic (the fleet table calls it for the
    few instances that have one)."""
    s = state.scraped
    if s.fresh:
        foreign = s.running + s.waiting - s.ours_at_scrape
        if foreign > 0:
            span = 2.0 * (s.interval_s if s.interval_s > 0 else 1.0)
            weight = 1.0 - (now - s.scraped_at) / span
            if weight > 0:
                w = s.waiting if s.waiting < foreign else foreign
                waiting = w * weight
                running = (foreign - w) * weight
                if waiting:
                    return waiting * state.mean_prompt_tokens.get(1024.0), running
                return 0.0, running
    return 0.0, 0.0


def candidate_times(
    states: Sequence[InstanceState], uncached_tokens: Sequence[int], now: float
) -> tuple[list[float], list[float], list[float]]:
    """`predicted_ttft_s`, `decode_step_s` and `cost_to_running_s` of every candidate, as
    three lists, in one call: what a load-aware router scores candidates by. The same
    arithmetic as those functions, in the same order (so the same floats; asserted by
    tests/test_decision_cost.py against them), with their dozen nested calls per candidate
    inlined: this loop is most of a load-aware decision's cost."""
    # Builtin calls (min, max, float) are written as comparisons: the same value (`max(a, b)`
    # is `b if b > a else a`), a fraction of the cost in this loop.
    ttfts: list[float] = []
    steps: list[float] = []
    costs: list[float] = []
    ceil = math.ceil
    for state, uncached in zip(states, uncached_tokens, strict=True):
        inst = state.instance
        pst = state.prefill_s_per_token.value
        if pst is None:
            pst = PRIOR_PREFILL_S_PER_TOKEN / inst.speed_hint
        step = state.decode_s_per_token.value
        if step is None:
            step = PRIOR_DECODE_STEP_S / inst.speed_hint
        chunk = inst.batched_tokens_hint or DEFAULT_CHUNK_TOKENS
        ahead = state.prefill_tokens_queued - 0.0
        queue: deque[Booking] = state.prefill_queue
        if queue:  # _drain_head
            while queue and not queue[0].prefilling:
                queue.popleft()
            if queue:
                head = queue[0]
                since, booked = state.prefill_head_since, head.booked_at
                elapsed = now - (booked if booked > since else since)
                if elapsed > 0:
                    drained = elapsed / (pst + step / chunk)
                    head_tokens = float(head.prefill_tokens)
                    ahead = state.prefill_tokens_queued - (
                        drained if drained < head_tokens else head_tokens
                    )
        residual = running = 0.0
        if state.scraped.fresh:
            residual, running = scrape_correction(state, now)
        own = uncached if uncached > 1 else 1
        tokens = (ahead if ahead > 0.0 else 0.0) + state.peer_prefill_tokens + residual + own
        ttfts.append(tokens * pst + ceil(tokens / chunk) * step if tokens > 0 else 0.0)
        steps.append(step)
        costs.append(
            (state.decode_seqs + state.prefill_seqs + state.peer_seqs + running) * own * pst
        )
    return ttfts, steps, costs


# -- bookkeeping (the coordinator's shell calls these; decisions only read) ----------------
def book(
    state: InstanceState,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    now: float,
    *,
    learns: bool = True,
    first_token_due: float | None = None,
) -> Booking:
    own = max(1, input_tokens - max(0, cached_tokens))
    ahead = prefill_ahead(state, now)
    b = Booking(state, own, input_tokens + output_tokens, now, ahead + own, learns)
    b.first_token_due = first_token_due
    if not state.prefill_queue:
        state.prefill_head_since = now
    state.prefill_queue.append(b)
    state.prefill_tokens_queued += own
    state.prefill_seqs += 1
    state.mean_prompt_tokens.add(float(own))
    return b


def _leave_prefill(b: Booking, now: float) -> None:
    st = b.state
    b.prefilling = False
    st.prefill_tokens_queued -= b.prefill_tokens
    st.prefill_seqs -= 1
    queue = st.prefill_queue
    was_head = bool(queue) and queue[0] is b
    while queue and not queue[0].prefilling:
        queue.popleft()
    if was_head:
        st.prefill_head_since = now


def first_token(b: Booking, now: float) -> None:
    """The request's first token arrived: its prefill is done, it decodes from now on."""
    if b.released or not b.prefilling:
        return
    st = b.state
    _leave_prefill(b, now)
    st.decode_seqs += 1
    st.decode_kv_tokens += b.kv_tokens
    if not b.learns:
        return
    # Prefill speed from this request: its TTFT against the work that was ahead of it.
    ttft = now - b.booked_at
    steps = math.ceil(b.work_ahead / chunk_tokens(st))
    busy = ttft - steps * decode_step_s(st)
    if busy <= 0:
        return
    # Ratio of sums, not a mean of ratios: a short prompt that waited out a step of someone
    # else's says little about speed and must not weigh like a long one.
    st.prefill_busy_s.add(busy)
    st.prefill_work_tokens.add(b.work_ahead)
    st.prefill_s_per_token.count += 1
    pool_speeds(st)


def pool_speeds(st: InstanceState) -> None:
    """Set the speeds decisions read from this replica's own estimates plus its peers'
    (`PeerSpeeds`; none without peers, and then exactly our own). Prefill: a ratio of sums,
    so adding the peers' sums is the same estimate over all their requests. Decode step:
    the mean of the replicas' estimates."""
    p = st.peer_speeds
    work = st.prefill_work_tokens.get(0.0) + p.prefill_work_tokens
    if work > 0:
        st.prefill_s_per_token.value = (st.prefill_busy_s.get(0.0) + p.prefill_busy_s) / work
    own = st.decode_step_own.value
    n = p.decode_replicas + (own is not None)
    if n:
        st.decode_s_per_token.value = ((own or 0.0) + p.decode_step_s) / n


def prefill_done(b: Booking, now: float) -> None:
    """The prefill leg of a disaggregated request answered: its prompt is prefilled there
    (the speed is learnt from it) and, the KV having left with the answer, its load leaves
    that instance."""
    first_token(b, now)
    release(b, now)


def observe_decode(state: InstanceState, tpot_s: float) -> None:
    if tpot_s > 0:
        state.decode_step_own.add(tpot_s)
        state.decode_s_per_token.count += 1
        pool_speeds(state)


def release(b: Booking, now: float) -> None:
    """The request ended (completed, failed or cancelled): its load leaves the instance."""
    if b.released:
        return
    b.released = True
    st = b.state
    if b.prefilling:
        _leave_prefill(b, now)
    else:
        st.decode_seqs -= 1
        st.decode_kv_tokens -= b.kv_tokens
