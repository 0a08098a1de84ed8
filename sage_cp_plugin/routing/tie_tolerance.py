"""How close two predicted TTFTs must be to count as a tie, from the request's objectives.

Least-TTFT placement (`predicted`) treats predictions within one decode step as equal and
gives the tie to the candidate whose running sequences the new prefill delays least
(`cost_to_running_s`). One step is the engine's granularity; it says nothing of what the
delay costs the running sequences. That depends on how close their inter-token time already
is to its objective: with the learnt step `s` (the TPOT the speed class sees) and the TPOT
objective `tau`, a sequence has `tau - s` of headroom per token. A prefill's stall is a share
of that headroom, `tau / (tau - s)` times larger than its share of the objective itself. So
the tie is one decode step measured against the headroom left:

    tolerance = s * tau / (tau - s)        (= s / (1 - rho), rho = s / tau)

Far from the objective (rho near 0: long outputs, few prefills, e.g. conversations) it is one
step, today's rule; near it (short outputs decoding beside back-to-back prefills, e.g. code
completion) the new request gives up more of its own TTFT to spare them. It never exceeds the
request's own TTFT objective (the request would give up what it is judged on), and when the
step already reaches the TPOT objective (rho >= 1) it is that TTFT objective. A request without
both objectives keeps one step: there is no headroom to measure.

Seen on Azure code at 70 % load (benchmarks/results/tie_tolerance_s11.md): least TTFT keeps
every instance prefilling, and the requests it made miss their TPOT (and round-robin did not)
had 2.3x the prefill tokens run beside their few decode steps. No constant here: the step is
learnt, both objectives are the request's.
"""

from __future__ import annotations

from sage_cp_plugin.pending import QueuedRequest


def tie_tolerance(item: QueuedRequest, step: float) -> float:
    """Predicted TTFTs within this many seconds of each other tie (see the module)."""
    req = item.request
    tpot_ms, ttft_ms = req.tpot_slo_ms, req.effective_ttft_slo_ms()
    if tpot_ms is None or ttft_ms is None:
        return step
    tau, cap = tpot_ms / 1000.0, ttft_ms / 1000.0
    rho = step / tau
    if rho >= 1.0:
        return cap if cap > step else step
    tol = step / (1.0 - rho)
    if tol > cap:
        tol = cap
    return tol if tol > step else step
