"""Where a request that runs whole may go on a disaggregated fleet (the `predicted`
trigger): the load model's predictions for each instance, fed to the pure rule
`split_decision.whole_targets`.

Per instance, the request's predicted TTFT (`load_model.predicted_ttft_s`) and the TPOT it
would decode at (`load_model.shared_step_s`: the decode step plus one chunk of the prefill
queued there; on an instance held by its prefill gate, at most the gate's tolerated wait of
prefill, since the gate opens only once the queue is down to that; on a prefill instance,
whose own step was learnt beside full chunks of split prompts, drawn from the decode step
the decode instances measure, with nothing queued, to its full-chunk step). A decode instance
prefills only what it was not sent before (`Disaggregator.uncached_tokens`); elsewhere the
whole prompt is counted.
"""

from __future__ import annotations

from sage_cp_plugin import load_model
from sage_cp_plugin.disaggregation import Disaggregator
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.pools import InstancePools
from sage_cp_plugin.split_decision import (
    DivertView,
    diverts,
    hurts_decodes,
    lateness,
    whole_targets,
)
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import ExecutionInstanceType


def whole_candidates(
    item: QueuedRequest,
    free: list[InstanceState],
    routable: list[InstanceState],
    pools: InstancePools,
    dis: Disaggregator,
    now: float,
) -> list[InstanceState]:
    """Among the instances with room (`free`), those where the load model predicts the
    request meets its objectives; none (it waits) when an instance of `routable` held back
    only by its prefill queue (`pools.opens_as_prefill_drains`) would miss them by less than
    every instance with room; and among them, not the decode instances whose decodes its
    prefill would cost a step (`split_decision.hurts_decodes`) while another instance takes
    it at no more extra waiting than its prefill would stall those decodes, summed
    (`split_decision.diverts`). With no instance meeting its objectives, those with room
    predicted to miss them by the least (never idle where a general pool would not be).
    Without the `predicted` trigger, `free` unchanged."""
    if not dis.predicted:
        return free
    decoding = ExecutionInstanceType.DECODING
    prefilling = ExecutionInstanceType.PREFILLING
    req, tokens = item.request, item.input_tokens
    slo_p = req.tpot_slo_ms
    ttft_left = item.ttft_left_s(now)
    tpot_slo = None if slo_p is None else slo_p / 1000
    have = {s.instance_id for s in free}
    held = [
        s for s in routable if s.instance_id not in have and pools.opens_as_prefill_drains(s, item)
    ]
    held_ids = {s.instance_id for s in held}
    limits = pools.limits
    # Per instance: the prompt tokens it would prefill there (the decode side knows what
    # it was sent; elsewhere the whole prompt), its predicted TTFT and TPOT there. An
    # instance held by its prefill gate takes the request once its queue is down to the
    # gate's tolerated wait, so the prefill its decode steps share is at most that.
    predicted: dict[str, tuple[int, float, float]] = {}
    # A decode step without long prefills beside it, as measured on the decode instances
    # (per unit of speed): what a prefill instance's own step, learnt beside full chunks,
    # cannot tell (`load_model.shared_step_s`).
    idle_step = min(
        (
            load_model.decode_step_s(s) * s.instance.speed_hint
            for s in routable
            if s.instance.instance_type is decoding and s.decode_s_per_token.value is not None
        ),
        default=None,
    )

    def predict(s: InstanceState) -> tuple[int, float, float]:
        p = predicted.get(s.instance_id)
        if p is None:
            is_dec = s.instance.instance_type is decoding
            u = dis.uncached_tokens(item, s) if is_dec else tokens
            idle = None
            if idle_step is not None and s.instance.instance_type is prefilling:
                idle = idle_step / s.instance.speed_hint
            tpot = load_model.shared_step_s(s, now, idle)
            if limits is not None and s.instance_id in held_ids:
                tpot = min(tpot, load_model.decode_step_s(s) + limits.tolerated_wait_s(s))
            p = (u, load_model.predicted_ttft_s(s, u, now), tpot)
            predicted[s.instance_id] = p
        return p

    def late(s: InstanceState) -> float:
        _, ttft, tpot = predict(s)
        return lateness(ttft, tpot, ttft_left, tpot_slo)

    ok = [s for s in free if late(s) <= 1.0] or free
    # The decode instance it would start soonest on: its TTFT there, and its prefill's
    # stall on the sequences decoding there.
    decode_ttft, decode_stall = min(
        (
            (predict(s)[1], load_model.cost_to_running_s(s, predict(s)[0], now))
            for s in ok
            if s.instance.instance_type is decoding
        ),
        default=(float("inf"), 0.0),
    )

    def serves(s: InstanceState) -> bool:
        _, ttft, tpot = predict(s)
        return diverts(
            DivertView(
                ttft_s=ttft,
                step_s=tpot,
                decode_ttft_s=decode_ttft,
                decode_stall_s=decode_stall,
                ttft_left_s=ttft_left,
                tpot_slo_s=tpot_slo,
            )
        )

    return whole_targets(
        free,
        lambda s: s.instance.instance_type is decoding,
        lambda s: hurts_decodes(
            predict(s)[0], load_model.prefill_s_per_token(s), load_model.decode_step_s(s)
        ),
        serves,
        late,
        held,
    )
