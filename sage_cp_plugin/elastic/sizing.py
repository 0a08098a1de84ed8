"""The fewest colocated replicas that keep a request mix within its SLOs.

A request meets its SLO when both its TTFT and its TPOT are within target, so the share that
misses is at most the sum of the two miss probabilities (the union bound: never optimistic).
``general_miss`` adds the TTFT tail (``ttft.py``: queueing for a slot and for the engine's
prefill) and the TPOT tail (``tpot.py``: other prompts' prefills landing in a request's
decode steps, from the output- and prompt-length samples); ``slo_replicas`` is the smallest
fleet whose predicted miss is within ``1 - attainment``. The autoscaler scales the TPOT share
by the observed/expected misses of its fleet (``tail_ratio.py``); the static fleets of the
evaluation are sized by the model alone. Both the autoscaler and the static
fleets of the evaluation are sized by this one function, so a comparison between them is a
comparison of *when* replicas run, not of two different capacity models. Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from sage_cp_plugin.elastic.capacity import StepModel
from sage_cp_plugin.elastic.tpot import length_samples, tpot_miss
from sage_cp_plugin.elastic.ttft import Lengths, general_ttft


@dataclass(frozen=True)
class Miss:
    ttft: float
    tpot: float

    @property
    def total(self) -> float:
        return min(1.0, self.ttft + self.tpot)


def samples(mix: Lengths) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Prompt and output samples of ``mix``: the observed ones, or log-normal quantiles."""
    prompts = mix.prompts or length_samples(mix.isl, mix.isl_cv2)
    outputs = mix.outputs or length_samples(mix.osl, mix.osl_cv2)
    return prompts, outputs


def general_miss(m: StepModel, rate: float, replicas: int, mix: Lengths, *, ttft_target_s: float,
                 tpot_target_s: float, ttft_correction: float = 1.0,
                 work_factor: float = 1.0, tpot_tail_ratio: float = 1.0) -> Miss:  # fmt: skip
    """Predicted shares of requests missing TTFT and TPOT on ``replicas`` colocated replicas
    (the TTFT target divided by its correction, as in ``ttft_replicas``; the TPOT share
    times ``tpot_tail_ratio``, the observed/expected misses of ``tail_ratio.py``)."""
    if rate <= 0:
        return Miss(0.0, 0.0)
    if replicas <= 0:
        return Miss(1.0, 1.0)
    target = ttft_target_s / max(ttft_correction, 1e-9)
    ttft = general_ttft(m, rate, replicas, mix, target, work_factor).miss
    prompts, outputs = samples(mix)
    tpot = tpot_miss(m, rate / replicas, outputs, prompts, tpot_target_s, work_factor)
    return Miss(ttft, min(1.0, tpot * tpot_tail_ratio))


def slo_replicas(m: StepModel, rate: float, mix: Lengths, *, ttft_target_s: float,
                 tpot_target_s: float, attainment: float, max_replicas: int,
                 ttft_correction: float = 1.0, work_factor: float = 1.0,
                 at_least: int = 1, tpot_tail_ratio: float = 1.0) -> int:  # fmt: skip
    """The fewest replicas, from ``at_least`` up, whose predicted miss (TTFT + TPOT) is within
    ``1 - attainment``; ``max_replicas`` if none is. The miss falls as replicas are added
    (each gets a smaller share of the same arrivals), so the count is found by doubling and
    bisection: a few evaluations even for a large fleet."""
    if rate <= 0:
        return 0
    budget = 1.0 - attainment

    def meets(c: int) -> bool:
        miss = general_miss(m, rate, c, mix, ttft_target_s=ttft_target_s,
                            tpot_target_s=tpot_target_s, ttft_correction=ttft_correction,
                            work_factor=work_factor,
                            tpot_tail_ratio=tpot_tail_ratio)  # fmt: skip
        return miss.total <= budget + 1e-12

    lo = max(1, at_least)
    if lo >= max_replicas or meets(lo):
        return min(lo, max_replicas)
    step, hi = 1, lo
    while True:  # lo fails; find a hi that meets
        hi = min(lo + step, max_replicas)
        if meets(hi):
            break
        if hi == max_replicas:
            return max_replicas
        lo, step = hi, 2 * step
    while hi - lo > 1:  # lo fails, hi meets
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi
