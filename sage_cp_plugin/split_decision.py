"""Whether one request should take the two-step disaggregated path (prefill on a prefill
instance, KV transfer, decode on a decode instance) or run whole on one instance.

The split's gain is the decode side's TPOT: a long prefill run on the instance that decodes
stalls every sequence decoding there. Its costs are the transfer, one extra hop, and, when
the prefill pool is busy, the wait for it; a split that waits for a busy prefill pool while
another instance could start the request now turns the fleet into two half-size pools,
which is how a static split loses goodput near saturation. So a request is split only when
all of these hold (`split_pays`, a pure function of the numbers in `SplitView`):

1. decode slack: the decode instance can take one more sequence (below its limit) and its
   current step time is within the request's TPOT objective, if it has one;
2. the uncached prompt is long enough to hurt co-running decodes: prefilling it takes at
   least one decode step of the instance it would otherwise run on;
3. the split costs the fleet no more time than running it whole: the request's own wait
   (predicted prefill-pool wait plus the KV transfer, against the wait of the best instance
   it would run whole on) plus the stall its prefill puts on the sequences decoding where
   it is prefilled (on the prefill instance, against on that whole instance: sequences
   there times its prefill time, `load_model.cost_to_running_s`), within one decode step.
   A long prompt that would run whole next to 30 decodes costs them 30 times its prefill:
   waiting a little for a prefill instance with fewer decodes is cheaper. And the split
   must not cost the request its TTFT objective (prefill wait, prefill, transfer within
   what is left of it) where running whole would not.
Otherwise the request runs whole, on any instance that has room, so the fleet is never
worse than a general pool of the same GPUs; but not on a decode instance when its prefill
would cost that instance's decodes a step (`hurts_decodes`, the test of 2.) while another
instance with room takes it (`diverts`): within its TTFT objective (what is left of it) and
TPOT objective, at an extra wait no longer than the stall its prefill would put on the
sequences decoding on the decode instance, summed. The TPOT a split buys is kept only if the
decode side stays free of long prefills; a decode instance with nothing decoding has nothing
to protect and is placed on like any other, and a request goes to a decode instance anyway
when elsewhere it would miss an objective (goodput first). The whole path compared in 3. is
the one the request would take: with the decode instances it may not use left out, a long
prompt that would wait for a busy prefill instance anyway is split (its decode then leaves
that instance too). Every quantity is a time from the load model; nothing is tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SplitView:
    """What the decision looks at, all in seconds and tokens (measured or predicted)."""

    uncached_tokens: int  # prompt tokens the decode instance would have to compute
    prefill_s_per_token: float  # prefill speed of the prefill instance
    transfer_s_per_token: float  # KV transfer cost per token
    prefill_wait_s: float  # predicted wait before the prefill instance starts it
    whole_wait_s: float  # predicted wait on the best instance that could run it whole now
    decode_step_s: float  # the decode instance's current step (inter-token) time
    decode_in_flight: int
    decode_limit: int
    tpot_slo_s: float | None = None
    # The stall its prefill puts on the sequences decoding where it would be prefilled:
    # the prefill instance (split) and the best instance it would run whole on.
    prefill_stall_s: float = 0.0
    whole_stall_s: float = 0.0
    prefill_s: float = 0.0  # its own prefill time on the prefill instance
    whole_ttft_s: float = 0.0  # its predicted TTFT on the best instance it would run whole on
    ttft_left_s: float | None = None  # its TTFT objective minus the time it already waited


def hurts_decodes(uncached_tokens: int, prefill_s_per_token: float, decode_step_s: float) -> bool:
    """Prefilling `uncached_tokens` takes at least one decode step of the instance: the
    sequences decoding there would feel it."""
    return uncached_tokens * prefill_s_per_token >= decode_step_s


@dataclass(frozen=True, slots=True)
class DivertView:
    """A request running whole, a non-decode instance it could go to instead of a decode
    instance (seconds, predicted by the load model)."""

    ttft_s: float  # its predicted TTFT on the non-decode instance
    step_s: float  # that instance's current step (inter-token) time
    decode_ttft_s: float  # its predicted TTFT on the best decode instance with room
    decode_stall_s: float  # the stall its prefill puts on the sequences decoding there, summed
    ttft_left_s: float | None = None  # TTFT objective minus the time it already waited
    tpot_slo_s: float | None = None


def diverts(v: DivertView) -> bool:
    """Whether the non-decode instance takes the request instead of a decode instance: it
    meets the request's objectives (TTFT within what is left, step within the TPOT
    objective; an objective it does not have is met), and the extra waiting it costs the
    request is no more than the stall its prefill would put on the sequences decoding on
    the decode instance (their count times its prefill: the fleet's total delay is the
    smaller). A decode instance with nothing decoding is then an instance like any other
    (no split to protect, a general pool's placement); one with 30 decodes is worth a
    wait of 30 prefills, up to the objective. Waiting only as long as that keeps a burst
    from filling the prefill side to the edge of the objective while decode instances
    could start the work now: each diverted request would eat the slack the next ones
    need, which is how a busy prefill side loses goodput a general pool keeps."""
    if lateness(v.ttft_s, v.step_s, v.ttft_left_s, v.tpot_slo_s) > 1.0:
        return False
    return v.ttft_s <= v.decode_ttft_s + v.decode_stall_s


def lateness(
    ttft_s: float, tpot_s: float, ttft_left_s: float | None, tpot_slo_s: float | None
) -> float:
    """How far a predicted TTFT and TPOT are from the request's objectives: the larger of
    prediction / objective (TTFT: against what is left of it); at most 1 when it meets them
    all, 0 without objectives. A TTFT objective already spent is missed everywhere alike."""
    late = 0.0
    if ttft_left_s is not None:
        late = ttft_s / ttft_left_s if ttft_left_s > 0 else float("inf")
    if tpot_slo_s is not None and tpot_slo_s > 0:
        late = max(late, tpot_s / tpot_slo_s)
    return late


def whole_targets(
    free: Sequence[T],
    is_decode: Callable[[T], bool],
    hurts: Callable[[T], bool],
    serves: Callable[[T], bool] = lambda _: True,
    late: Callable[[T], float] = lambda _: 0.0,
    held: Sequence[T] = (),
) -> list[T]:
    """Where a request that runs whole may go among the instances with room (`free`).

    First its objectives: only the instances where the load model predicts it meets them
    (`late` at most 1: TTFT within what is left, TPOT at the step it would decode at there).
    When none with room does, the instances predicted to miss them by the least; and when
    that is one whose room opens as its prefill queue drains (`held`), none: the request
    waits for it in the coordinator's queue (the queue drains as fast whether the request
    waits here or in that engine, so its predicted TTFT there holds). A general pool's gate
    holds it the same way; without this, a PD fleet sends it to the instance whose gate
    is the loosest (a prefill instance, gated by chunk steps, not decode steps), behind
    prefill, where it misses.

    Then, among those: not on a decode instance whose decodes its prefill would hurt while a
    non-decode instance `serves` it (`diverts`: within its objectives at no more waiting than
    its prefill would stall the decodes); when none does, any of them."""
    ok = [s for s in free if late(s) <= 1.0]
    if not ok and free:
        best_held = min((late(s) for s in held), default=float("inf"))
        best = min(late(s) for s in free)
        if best_held < best:
            return []
        ok = [s for s in free if late(s) <= max(1.0, best_held)] if held else list(free)
    if not any(not is_decode(s) and serves(s) for s in ok):
        return ok
    return [s for s in ok if not is_decode(s) or not hurts(s)]


def split_pays(v: SplitView) -> bool:
    """True when the two-step path beats serving the request whole (see module doc)."""
    if v.decode_in_flight >= v.decode_limit:
        return False
    if v.tpot_slo_s is not None and v.decode_step_s > v.tpot_slo_s:
        return False  # the decode instance already misses the objective: adding hurts
    if not hurts_decodes(v.uncached_tokens, v.prefill_s_per_token, v.decode_step_s):
        return False  # fits in a step's slack: co-runners barely notice it
    split_wait = v.prefill_wait_s + v.uncached_tokens * v.transfer_s_per_token
    left = v.ttft_left_s
    if left is not None and split_wait + v.prefill_s > left and v.whole_ttft_s <= left:
        return False  # the split would miss the TTFT objective that running whole meets
    split_cost = split_wait + v.prefill_stall_s
    return split_cost <= v.whole_wait_s + v.whole_stall_s + v.decode_step_s
