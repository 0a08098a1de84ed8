"""Pick the candidate where a request adds the least latency to the fleet, not only to itself.

Least predicted TTFT (`predicted.lowest_ttft_index`) counts the new request's wait alone. Its
prefill also delays every sequence running on the instance it joins: each chunked-prefill
step that carries its tokens carries their decode step too (`load_model.cost_to_running_s`,
sequences there times the prefill seconds it adds, from the instance's learnt prefill
speed). The sum of the two is the request-seconds the placement adds: its own TTFT plus the
inter-token delay it causes. Dynamo's KV router scores the same two parts (prefill blocks
plus active decode blocks, with a weight between them); here both are seconds, so there is
nothing to weight. The same tie rules as least TTFT apply to the sums (within one decode
step: the lower cost to running, fewer tokens to compute, then the request's rotation).

Measured trade-off (benchmarks/results/added_latency.md): on Azure code traffic, where
decodes are short and prefills back to back, it raises goodput (TPOT under the SLO) well
above least-TTFT's and round-robin's, and costs P90 TTFT. So it is `prefix_aware`'s
`score="added_latency"` option, not its default.
"""

from __future__ import annotations

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.predicted import Times, lowest_ttft_index


def lowest_added_latency_index(item: QueuedRequest, times: Times) -> int:
    """The candidate with the least predicted TTFT plus cost to the requests running there."""
    added = [t + c for t, c in zip(times.ttfts, times.costs, strict=True)]
    return lowest_ttft_index(item, Times(times.owns, added, times.steps, times.costs))


def lowest_added_latency_within_slack_index(item: QueuedRequest, times: Times, now: float) -> int:
    """Least added latency among candidates whose predicted TTFT meets what is left of the
    request's TTFT objective at `now`; least TTFT when none does or the request has no TTFT
    objective.

    Why: the added-latency cost buys other requests' TPOT with this request's wait. That
    trade costs nothing the request is judged on while its first token still comes within
    its objective; past the objective every extra millisecond is a miss and a P90 TTFT loss
    (the 1.13x/1.15x of `benchmarks/results/added_latency.md`), so there the request takes
    the least-TTFT pick. The objective counts from arrival (as the TTFT the user sees, and
    `slo_aware`'s first-token deadline), so the time already waited in the coordinator's
    queue is spent: the bound is `arrival + objective - now`. The rule has no constant of
    its own: the bound is the request's SLO. `prefix_aware`'s opt-in
    `score="added_latency_slack"`; measured in `benchmarks/results/added_latency_slack.md`.
    """
    slo_ms = item.request.effective_ttft_slo_ms()
    if slo_ms is None:
        return lowest_ttft_index(item, times)
    left_s = item.arrival + slo_ms / 1000.0 - now
    ok = [j for j, t in enumerate(times.ttfts) if t <= left_s]
    if not ok:
        return lowest_ttft_index(item, times)
    sub = Times(
        [times.owns[j] for j in ok],
        [times.ttfts[j] for j in ok],
        [times.steps[j] for j in ok],
        [times.costs[j] for j in ok],
    )
    return ok[lowest_added_latency_index(item, sub)]
