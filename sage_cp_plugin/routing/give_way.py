"""When a sticky router's home instance gives way to a faster one.

`affinity` and `locality` pick a home by hashing (a user, a prompt's start) so that related
requests meet a warm cache. Bounded load on the ring caps the home's share of requests, but
a count of requests is not what a new request waits for: the prefill tokens queued there
are (`load_model`). On traffic whose keys do not share a cache (every request of Azure's
traces has its own prompt) hashing is random placement, and random placement queues more
than round-robin: affinity and locality lost 1.06x and 1.26x P90 TTFT to round-robin on
azure_conv at 90 % load.

The home keeps the request while its predicted TTFT (the load model, with the prompt
tokens it already caches free, as `prefix_aware` scores) is within one decode step of the
best candidate's: the cache the request finds there is already in that prediction, and a
difference below a step is noise (`predicted`). When another candidate is faster by more,
the affinity is worth less than the extra wait and the request goes where `prefix_aware`
would send it (with its tie rule, `routing.tie_tolerance`). Both sides are seconds: nothing
to tune. The home's own margin stays one step: widening it would keep the request on the
home, not spare anyone's decodes, which is what the wider tie is for.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.predicted import candidate_ttfts, lowest_ttft_index
from sage_cp_plugin.routing.tie_tolerance import tie_tolerance
from sage_cp_plugin.state import FleetSnapshot, InstanceState


def cached_by_candidate(
    item: QueuedRequest, candidates: Sequence[InstanceState], fleet: FleetSnapshot
) -> list[int] | None:
    view = fleet.cache_view
    return view.cached_tokens(item, candidates) if view is not None else None


def home_unless_slower(
    item: QueuedRequest,
    home: InstanceState,
    candidates: Sequence[InstanceState],
    fleet: FleetSnapshot,
) -> InstanceState:
    """`home` unless another candidate's predicted TTFT beats it by more than a step."""
    if len(candidates) < 2:
        return home
    h = next((i for i, c in enumerate(candidates) if c is home), None)
    if h is None:
        return home
    times = candidate_ttfts(
        item, candidates, cached_by_candidate(item, candidates, fleet), fleet.now
    )
    ttfts, steps = times.ttfts, times.steps
    b = min(range(len(ttfts)), key=ttfts.__getitem__)
    tol = min(steps[h], steps[b])
    if ttfts[h] <= ttfts[b] + tol:
        return home
    # The same times decide where it goes instead (computed once).
    return candidates[lowest_ttft_index(item, times, tie_tolerance)]
