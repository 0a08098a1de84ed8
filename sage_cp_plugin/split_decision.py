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
3. the split does not make the request wait: predicted prefill-pool wait plus the KV
   transfer is within one decode step of the wait of the best instance that could serve it
   whole now.
Otherwise the request runs whole, on any instance that has room, so the fleet is never
worse than a general pool of the same GPUs; but not on a decode instance when its prefill
would cost that instance's decodes a step (`hurts_decodes`, the test of 2.) while a prefill
instance has room: the TPOT a split buys is kept only if the decode side stays free of long
prefills (sending whole requests anywhere measured a TPOT gain of 13-14 % where split,
instead of the 40 % it has when decode instances decode only).
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


def hurts_decodes(uncached_tokens: int, prefill_s_per_token: float, decode_step_s: float) -> bool:
    """Prefilling `uncached_tokens` takes at least one decode step of the instance: the
    sequences decoding there would feel it."""
    return uncached_tokens * prefill_s_per_token >= decode_step_s


def whole_targets(
    free: Sequence[T], is_decode: Callable[[T], bool], hurts: Callable[[T], bool]
) -> list[T]:
    """Where a request that runs whole may go among the instances with room: not on a
    decode instance whose decodes its prefill would hurt while a non-decode instance has
    room; when none has, anywhere (the fleet never idles where a general pool would not)."""
    if not any(not is_decode(s) for s in free):
        return list(free)
    return [s for s in free if not is_decode(s) or not hurts(s)]


def split_pays(v: SplitView) -> bool:
    """True when the two-step path beats serving the request whole (see module doc)."""
    if v.decode_in_flight >= v.decode_limit:
        return False
    if v.tpot_slo_s is not None and v.decode_step_s > v.tpot_slo_s:
        return False  # the decode instance already misses the objective: adding hurts
    if not hurts_decodes(v.uncached_tokens, v.prefill_s_per_token, v.decode_step_s):
        return False  # fits in a step's slack: co-runners barely notice it
    split_wait = v.prefill_wait_s + v.uncached_tokens * v.transfer_s_per_token
    return split_wait <= v.whole_wait_s + v.decode_step_s
