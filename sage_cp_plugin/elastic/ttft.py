"""How many replicas keep the TTFT SLO: a queueing estimate over the step-time model.

The TPOT bound (``capacity.py``) sizes a fleet for its *mean* batch; what misses the TTFT SLO
under Poisson arrivals is the queue that forms when a burst of arrivals meets a fleet
running near its mean. A request's TTFT on a colocated replica is three waits:

1. **A slot** (coordinator): a replica admits ``N = max_num_seqs`` requests at once (the
   engine's, or the coordinator's per-instance limit if smaller) and holds each for its whole
   life (prefill + ``osl`` decode steps). ``c`` replicas are ``c * N`` servers: M/G/m, with
   Erlang C for the chance to wait and the Allen-Cunneen factor ``(1 + cs^2) / 2`` for a
   holding time that is not exponential (output lengths are heavy-tailed).
2. **The engine's prefill queue**: prompts are prefilled in arrival order while the decode
   batch runs, an M/G/1 per replica whose load is the replica's whole per-token work share;
   Pollaczek-Khinchine gives the mean wait with the prompt lengths' ``cv^2``, and the tail is
   the usual exponential approximation ``P(W > t) = rho * exp(-rho * t / E[W])``.
3. **Its own prefill**: ``b0 + isl * b1 + n * b2`` (one step carrying the running batch).

``miss_probability`` adds the two tails, each at the budget the other leaves on average;
``ttft_replicas`` is the smallest fleet whose miss probability is within ``1 - attainment``.
The observed/predicted ratio of mean TTFT (Dynamo's SLA planner's correction factor) enters
as Dynamo applies its decode correction: the target is divided by it, so a fleet that runs
slower than the model keeps the model's prediction under a correspondingly tighter target.
A prefill-only replica (PD mode) has no decode batch: its queue is M/G/c over prefills.
Every function is pure and deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sage_cp_plugin.elastic.capacity import StepModel


@dataclass(frozen=True)
class Lengths:
    """The forecast request mix: mean prompt/output tokens and their squared coefficients of
    variation (0 = every request alike; the bundled Azure traces are 0.5-5)."""

    isl: float
    osl: float
    isl_cv2: float = 1.0
    osl_cv2: float = 1.0
    # Equally weighted samples (quantiles) of the prompt and output lengths, for the TPOT
    # tail (``tpot.py``); empty: a log-normal with the means and cv^2 above stands in.
    prompts: tuple[float, ...] = ()
    outputs: tuple[float, ...] = ()


def erlang_c(servers: int, offered: float) -> float:
    """P(an arrival waits) in M/M/m with ``servers`` and ``offered = rate * hold`` load;
    1 at or beyond saturation. Erlang B by its stable recursion, then C from B."""
    if servers <= 0 or offered >= servers:
        return 1.0
    if offered <= 0:
        return 0.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return servers * b / (servers - offered * (1.0 - b))


def mgm_wait_tail(servers: int, rate: float, hold_s: float, hold_cv2: float, t: float) -> float:
    """P(wait > t) in M/G/m: Erlang C times an exponential tail whose rate ``(m - a) / hold``
    is slowed by the Allen-Cunneen factor ``(1 + cs^2) / 2``."""
    a = rate * hold_s
    if servers <= 0 or a >= servers:
        return 1.0
    p_wait = erlang_c(servers, a)
    if t <= 0:
        return p_wait
    decay = (servers - a) / hold_s * 2.0 / (1.0 + hold_cv2)
    return p_wait * math.exp(-decay * t)


def mgm_mean_wait(servers: int, rate: float, hold_s: float, hold_cv2: float) -> float:
    a = rate * hold_s
    if servers <= 0 or a >= servers:
        return math.inf
    return erlang_c(servers, a) * hold_s / (servers - a) * (1.0 + hold_cv2) / 2.0


@dataclass(frozen=True)
class TtftEstimate:
    """The parts of a request's TTFT on a fleet of ``replicas`` (seconds; inf: overloaded)."""

    replicas: int
    own_prefill_s: float
    engine_wait_s: float  # mean wait in an engine's prefill queue
    slot_wait_s: float  # mean wait for a slot at the coordinator
    miss: float  # P(TTFT > target)

    @property
    def mean_s(self) -> float:
        return self.own_prefill_s + self.engine_wait_s + self.slot_wait_s


def general_ttft(m: StepModel, rate: float, replicas: int, mix: Lengths, target_s: float,
                 work_factor: float = 1.0) -> TtftEstimate:  # fmt: skip
    """TTFT on ``replicas`` colocated replicas sharing ``rate`` requests/s (see the module doc).
    ``work_factor`` scales the per-token work (the TPOT correction of the autoscaler)."""
    inf = TtftEstimate(replicas, math.inf, math.inf, math.inf, 1.0)
    if replicas <= 0:
        return inf if rate > 0 else TtftEstimate(0, 0.0, 0.0, 0.0, 0.0)
    x = rate / replicas
    b1, b2 = m.b1_s_per_token * work_factor, m.b2_s_per_seq * work_factor
    rho = x * (mix.isl * b1 + mix.osl * b2)
    if rho >= 1.0:
        return inf
    tpot = m.b0_s / (1.0 - rho)
    batch = min(x * mix.osl * tpot, float(m.max_num_seqs))
    own = m.b0_s + mix.isl * b1 + batch * b2
    # Engine prefill queue, M/G/1 (P-K): E[S^2] / E[S] = E[S] * (1 + cv^2).
    engine_wait = rho * own * (1.0 + mix.isl_cv2) / (2.0 * (1.0 - rho))
    # Slot queue, M/G/m over replicas * max_num_seqs servers, each held a request's life.
    decode_s = mix.osl * tpot
    hold = own + engine_wait + decode_s
    hold_cv2 = decode_s**2 * mix.osl_cv2 / hold**2
    servers = replicas * m.max_num_seqs
    slot_wait = mgm_mean_wait(servers, rate, hold, hold_cv2)
    if not math.isfinite(slot_wait):
        return inf
    p_slot = mgm_wait_tail(servers, rate, hold, hold_cv2, target_s - own - engine_wait)
    budget_engine = target_s - own - slot_wait
    if engine_wait <= 0:
        p_engine = 0.0 if budget_engine >= 0 else 1.0
    else:
        p_engine = rho * math.exp(-rho * max(budget_engine, 0.0) / engine_wait)
    miss = 1.0 if budget_engine < 0 else min(1.0, p_slot + p_engine)
    return TtftEstimate(replicas, own, engine_wait, slot_wait, miss)


def prefill_ttft(m: StepModel, rate: float, replicas: int, mix: Lengths, target_s: float,
                 work_factor: float = 1.0) -> TtftEstimate:  # fmt: skip
    """TTFT on ``replicas`` prefill-only replicas: M/G/c over prefills of ``b0 + isl * b1``."""
    inf = TtftEstimate(replicas, math.inf, math.inf, math.inf, 1.0)
    if replicas <= 0:
        return inf if rate > 0 else TtftEstimate(0, 0.0, 0.0, 0.0, 0.0)
    own = m.b0_s + mix.isl * m.b1_s_per_token * work_factor
    wait = mgm_mean_wait(replicas, rate, own, mix.isl_cv2)
    if not math.isfinite(wait):
        return inf
    miss = 1.0 if own > target_s else mgm_wait_tail(replicas, rate, own, mix.isl_cv2,
                                                    target_s - own)  # fmt: skip
    return TtftEstimate(replicas, own, 0.0, wait, miss)


def ttft_replicas(m: StepModel, rate: float, mix: Lengths, *, target_s: float, attainment: float,
                  max_replicas: int, role: str = "general", correction: float = 1.0,
                  work_factor: float = 1.0, at_least: int = 1) -> int:  # fmt: skip
    """The fewest replicas, from ``at_least`` up, whose predicted P(TTFT > target /
    correction) is within ``1 - attainment`` (``max_replicas`` if none is). A caller that
    takes the max with another bound passes that bound as ``at_least`` (the same answer,
    fewer Erlang C evaluations)."""
    if rate <= 0:
        return 0
    estimate = prefill_ttft if role == "prefill" else general_ttft
    target = target_s / max(correction, 1e-9)
    for c in range(max(1, at_least), max_replicas + 1):
        if estimate(m, rate, c, mix, target, work_factor).miss <= 1.0 - attainment:
            return c
    return max_replicas
