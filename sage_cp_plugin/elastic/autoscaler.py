"""The autoscaler: replicas per role for one model, as a pure function of what was observed.

``decide(config, step_model, sample, state) -> (Decision, state')`` does no I/O and reads no
clock: the controller (``elastic/controller.py``) builds the ``LoadSample`` from the
coordinator's metrics, and an actuator carries the decision out. The same function runs on
the virtual clock in the evaluation (``elastic/evaluation.py``).

What it does, and from whom the idea comes:
- **Capacity from a model, corrected by observation** (Dynamo's SLA planner): a general
  fleet gets the fewest replicas whose predicted share of requests missing TTFT or TPOT is
  within ``1 - slo_attainment`` (``sizing.py``: the TTFT tail of ``ttft.py``, M/G/m slots
  and an M/G/1 engine prefill queue, plus the TPOT tail of ``tpot.py``, other prompts'
  prefills landing in a request's decode steps, over the observed prompt/output length
  quantiles), at the forecast rate, and never fewer than the mean-TPOT bound at full use.
  The ratio of observed to predicted mean TPOT (the mean over *requests*,
  ``tpot.mean_tpot``, as the observation is), smoothed and bounded, scales the work per
  request; the same ratio for mean TTFT tightens the TTFT target (target / ratio, as Dynamo
  corrects its ITL target), so a model that is off by 30 % stops mattering after a few
  intervals. Each ratio moves only as far as its observed mean's standard error shows
  (``correction.py``): one slow request in an interval does not move the model. The TPOT *tail* gets its own correction (``tail_ratio.py``): the misses the
  fleet really had over ``scale_down_window_s`` against those the model expected for the
  same requests at the fleet and rate they ran at, moved from 1 only as far as the Poisson
  bounds of the observed count show (the model's independent-Poisson replica loads and
  whole-prompt prefills over-predicted Mooncake's TPOT misses tenfold: a load-aware router
  and the prefix cache keep long prefills out of short answers).
- **A bounded rate over a window** (``arrivals.py``): the arrivals of the last
  ``forecast_window_s`` give a Poisson estimate with confidence bounds (``confidence``)
  whose width shrinks with the number of arrivals; a rise significant beyond those bounds is
  forecast to ``now + cold_start_s + interval_s``, because a replica asked for now serves
  only after its cold start; a backlog adds ``waiting / backlog_drain_s``. The fleet is
  sized for the *upper* bound (``raw``). The prompt lengths are bounded the same way by
  the number of requests they are estimated from (``mix.py``).
- **Stabilisation by the same bounds**, a dead band the data sets rather than a constant:
  scale up when the estimate itself (or, before the window holds enough arrivals for the
  bound to be within ``tolerance`` of the estimate, its lower bound; or any recent suffix's
  lower bound, which catches a step long before the window's mean moves) needs more than
  the fleet; then to the upper bound's count. Scale down only when the upper bound has
  needed fewer for all of ``scale_down_window_s`` (to the highest of those counts: the
  online corrections' noise is not in the rate's bounds), not within ``scale_down_cooldown_s`` of any action and
  beyond the ``tolerance`` band. Between the two nothing happens, so Poisson noise alone
  must move the estimate by a confidence half-width to cause an action. A need
  ``panic_factor`` times the fleet (or any need at zero) ignores ``scale_up_cooldown_s``.
  No scale-down while replicas of the role are still in their cold start (unless overdue
  by ``cold_start_s + scale_down_window_s``), nor for ``forecast_window_s`` after they
  served, so the bounds no longer hold what the smaller fleet could take.
- **Roles**: a ``general`` fleet gets one count; a ``pd`` fleet gets prefill and decode counts
  sized separately, so the split follows the prompt/output mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sage_cp_plugin.elastic.arrivals import Interval, RateEstimate, estimate, z_of
from sage_cp_plugin.elastic.capacity import (
    StepModel,
    decode_replicas,
    general_replicas,
    prefill_replicas,
)
from sage_cp_plugin.elastic.correction import corrected
from sage_cp_plugin.elastic.mix import prompt_factors
from sage_cp_plugin.elastic.sizing import general_miss, samples, slo_replicas
from sage_cp_plugin.elastic.tail_ratio import TailCell, tail_ratio
from sage_cp_plugin.elastic.tpot import mean_tpot
from sage_cp_plugin.elastic.ttft import Lengths, general_ttft, prefill_ttft, ttft_replicas

Role = Literal["general", "prefill", "decode"]
FleetMode = Literal["general", "pd"]
ROLES_OF: dict[FleetMode, tuple[Role, ...]] = {"general": ("general",),
                                               "pd": ("prefill", "decode")}  # fmt: skip


class AutoscalerConfig(BaseModel):
    """Targets and damping of the autoscaler (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: FleetMode = "general"
    ttft_target_s: float = Field(2.0, gt=0)
    tpot_target_s: float = Field(0.05, gt=0)
    utilisation: float = Field(0.8, gt=0, le=1)  # of the SLO-bound capacity
    # Share of requests the TTFT sizing keeps within ttft_target_s (the queueing estimate's
    # tail); 0 switches the TTFT sizing off (TPOT only, the model before session 5).
    slo_attainment: float = Field(0.99, ge=0, lt=1)
    min_replicas: int = Field(1, ge=0)  # per role; 0 allows scale to zero
    max_replicas: int = Field(64, ge=1)
    interval_s: float = Field(30.0, gt=0)  # how often decide() runs
    cold_start_s: float = Field(120.0, ge=0)
    forecast_window_s: float = Field(300.0, gt=0)
    backlog_drain_s: float = Field(60.0, gt=0)
    scale_up_cooldown_s: float = Field(0.0, ge=0)
    scale_down_cooldown_s: float = Field(300.0, ge=0)
    scale_down_window_s: float = Field(600.0, ge=0)
    tolerance: float = Field(0.1, ge=0, lt=1)
    # One-sided confidence of the arrival-rate bounds (arrivals.py): sets the dead band
    # between scaling up and down, in units of the window's own Poisson noise.
    confidence: float = Field(0.95, ge=0.5, lt=1)
    panic_factor: float = Field(2.0, gt=1)
    correction_smoothing: float = Field(0.3, gt=0, le=1)  # EWMA weight of a new ratio
    correction_min: float = Field(0.5, gt=0)
    correction_max: float = Field(3.0, gt=0)
    min_samples: int = Field(5, ge=1)  # completed requests before a latency is trusted

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalerConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.correction_min > self.correction_max:
            raise ValueError("correction_min must not exceed correction_max")
        return self


@dataclass(frozen=True)
class LoadSample:
    """What one model's fleet did over the last interval (built by the controller)."""

    now: float
    arrival_rate: float  # requests/s arrived in the interval
    mean_prompt_tokens: float
    mean_output_tokens: float
    waiting: int = 0  # requests queued in the coordinator now
    completed: int = 0  # requests that finished in the interval
    observed_ttft_s: float | None = None  # mean over those
    observed_tpot_s: float | None = None
    # Standard errors of those means (their requests' standard deviation / sqrt(count));
    # None: the means are taken as exact (correction.py).
    observed_ttft_se_s: float | None = None
    observed_tpot_se_s: float | None = None
    # Squared coefficients of variation of the prompt/output lengths (queueing tails).
    prompt_cv2: float = 1.0
    output_cv2: float = 1.0
    # Quantiles of recently completed requests' prompt and output lengths (``tpot.summarise``)
    # for the TPOT tail; empty: a log-normal with the means and cv^2 stands in.
    prompt_lengths: tuple[float, ...] = ()
    output_lengths: tuple[float, ...] = ()
    ready: dict[Role, int] = field(default_factory=dict)  # serving now
    starting: dict[Role, int] = field(default_factory=dict)  # asked for, still cold
    # Seconds the arrival_rate was measured over (0: the configured interval_s); with the
    # rate it gives the interval's arrival count, which the bounds are computed from.
    arrival_window_s: float = 0.0
    # Of the ``completed`` requests, how many had a TPOT above ``tpot_target_s`` (None: not
    # counted, so the TPOT tail correction learns nothing from this sample).
    tpot_misses: int | None = None
    # How many completed requests the length mix above is estimated from (0: not said, the
    # mix is taken as exact); the prompt lengths' confidence bounds come from it (mix.py).
    mix_samples: int = 0


@dataclass(frozen=True)
class ScalerState:
    """What decide() remembers between calls (returned anew, never mutated)."""

    arrivals: tuple[Interval, ...] = ()  # (end time, arrivals, seconds) in the window
    raw: tuple[tuple[float, tuple[tuple[Role, int], ...]], ...] = ()  # (time, bounded need)
    ttft_correction: float = 1.0
    tpot_correction: float = 1.0
    tail: tuple[TailCell, ...] = ()  # (time, TPOT misses observed, expected) per interval
    tpot_tail_ratio: float = 1.0
    last_up: float = -math.inf
    last_cold: float = -math.inf  # the last decision that saw a replica still starting
    last_action: float = -math.inf
    actions: int = 0


@dataclass(frozen=True)
class Decision:
    now: float
    desired: dict[Role, int]
    current: dict[Role, int]  # ready + starting when decided
    raw: dict[Role, int]  # before stabilisation
    forecast_rate: float  # the upper bound the fleet is sized for (requests/s, + backlog)
    ttft_correction: float
    tpot_correction: float
    reason: str
    tpot_tail_ratio: float = 1.0

    @property
    def changed(self) -> bool:
        return any(self.desired[r] != self.current.get(r, 0) for r in self.desired)


def raw_replicas(cfg: AutoscalerConfig, m: StepModel, rate: float, isl: float, osl: float,
                 ttft_c: float, tpot_c: float, *, prompt_cv2: float = 1.0,
                 output_cv2: float = 1.0, prompts: tuple[float, ...] = (),
                 outputs: tuple[float, ...] = (),
                 tpot_tail_ratio: float = 1.0) -> dict[Role, int]:  # fmt: skip
    """Replicas per role for ``rate`` requests/s (before bounds and stabilisation).

    General fleets with ``slo_attainment > 0``: the fewest replicas whose predicted share of
    requests missing TTFT or TPOT (``sizing.slo_replicas``: both tails, TPOT from the output-
    and prompt-length samples) is within ``1 - slo_attainment``, and never fewer than the
    mean-TPOT bound at full use (below it the batch cannot keep up at all). The tails replace
    the ``utilisation`` headroom there: headroom was the stand-in for them. Otherwise (and
    for PD roles) the mean bounds at ``utilisation``, with the TTFT tail for prefill."""
    u = cfg.utilisation
    mix = Lengths(isl, osl, prompt_cv2, output_cv2, prompts, outputs)

    def by_ttft(role: str, at_least: float) -> float:
        if cfg.slo_attainment <= 0 or not math.isfinite(at_least):
            return 0.0
        return float(ttft_replicas(m, rate, mix, target_s=cfg.ttft_target_s,
                                   attainment=cfg.slo_attainment, max_replicas=cfg.max_replicas,
                                   role=role, correction=ttft_c,
                                   work_factor=tpot_c if role == "general" else 1.0,
                                   at_least=math.floor(at_least)))  # fmt: skip

    if cfg.mode == "general" and cfg.slo_attainment > 0:
        floor_need = general_replicas(rate, isl, osl, m, tpot_target_s=cfg.tpot_target_s,
                                      utilisation=1.0, correction=tpot_c)  # fmt: skip
        need: dict[str, float] = {"general": float(slo_replicas(
            m, rate, mix, ttft_target_s=cfg.ttft_target_s, tpot_target_s=cfg.tpot_target_s,
            attainment=cfg.slo_attainment, max_replicas=cfg.max_replicas, ttft_correction=ttft_c,
            work_factor=tpot_c, tpot_tail_ratio=tpot_tail_ratio,
            at_least=math.ceil(floor_need - 1e-9) if math.isfinite(floor_need) else cfg.max_replicas,
        ))}  # fmt: skip
    elif cfg.mode == "general":
        need = {"general": general_replicas(rate, isl, osl, m, tpot_target_s=cfg.tpot_target_s,
                                            utilisation=u, correction=tpot_c)}  # fmt: skip
    else:
        need = {
            "prefill": max(
                p := prefill_replicas(rate, isl, m, utilisation=u), by_ttft("prefill", p)
            ),
            "decode": decode_replicas(
                rate, osl, m, tpot_target_s=cfg.tpot_target_s, utilisation=u, correction=tpot_c
            ),
        }
    out: dict[Role, int] = {}
    for role, x in need.items():
        n = math.ceil(x - 1e-9) if math.isfinite(x) else cfg.max_replicas
        floor = 1 if rate > 0 else 0  # any traffic needs a replica, whatever min_replicas
        out[role] = min(max(n, cfg.min_replicas, floor), cfg.max_replicas)  # type: ignore[index]
    return out


def up_trigger(est: RateEstimate, tolerance: float) -> float:
    """The rate a scale-up is decided on: the estimate once its bound is within
    ``tolerance`` of it, its lower bound before (a first decision on few arrivals acts only
    on what they surely show), and never below a recent suffix's lower bound (a step)."""
    level = est.point if est.precise(tolerance) else est.lower
    return max(level, est.recent_lower)


def predicted_mean_ttft_s(cfg: AutoscalerConfig, m: StepModel, rate: float,
                          ready: dict[Role, int], mix: Lengths) -> float:  # fmt: skip
    """The model's mean TTFT for what the ready fleet is serving (the correction's reference)."""
    if cfg.mode == "general":
        n = ready.get("general", 0)
        return general_ttft(m, rate, n, mix, cfg.ttft_target_s).mean_s
    n = ready.get("prefill", 0)
    return prefill_ttft(m, rate, n, mix, cfg.ttft_target_s).mean_s


def decide(cfg: AutoscalerConfig, m: StepModel, s: LoadSample,
           state: ScalerState) -> tuple[Decision, ScalerState]:  # fmt: skip
    roles = ROLES_OF[cfg.mode]
    ready = {r: s.ready.get(r, 0) for r in roles}
    current = {r: ready[r] + s.starting.get(r, 0) for r in roles}

    # 1. Correct the model by what the ready replicas really did at this load.
    ttft_c, tpot_c = state.ttft_correction, state.tpot_correction
    tail = state.tail
    serving = sum(ready.values())
    if s.completed >= cfg.min_samples and serving > 0 and s.arrival_rate > 0:
        isl, osl = s.mean_prompt_tokens, s.mean_output_tokens
        per = s.arrival_rate / max(ready.get("general", 0) or ready.get("decode", 0) or serving, 1)
        mix = Lengths(isl, osl, s.prompt_cv2, s.output_cv2)
        predicted = predicted_mean_ttft_s(cfg, m, s.arrival_rate, ready, mix)
        bounds = {"z": z_of(cfg.confidence), "smoothing": cfg.correction_smoothing,
                  "floor": cfg.correction_min, "ceiling": cfg.correction_max}  # fmt: skip
        ttft_c = corrected(ttft_c, s.observed_ttft_s, predicted, se=s.observed_ttft_se_s,
                           **bounds)  # fmt: skip
        # Like with like: the observed mean is over requests, whose TPOT short answers after
        # long prompts raise well above the step-time mean (tpot.mean_tpot).
        prompts, outputs = samples(replace(mix, prompts=s.prompt_lengths,
                                           outputs=s.output_lengths))  # fmt: skip
        tpot_c = corrected(tpot_c, s.observed_tpot_s, mean_tpot(m, per, outputs, prompts),
                           se=s.observed_tpot_se_s, **bounds)  # fmt: skip
        if cfg.mode == "general" and ready.get("general", 0) > 0 and s.tpot_misses is not None:
            # The misses the (corrected) model expected for these requests at this fleet.
            expected = general_miss(m, s.arrival_rate, ready["general"],
                                    replace(mix, prompts=prompts, outputs=outputs),
                                    ttft_target_s=cfg.ttft_target_s,
                                    tpot_target_s=cfg.tpot_target_s, ttft_correction=ttft_c,
                                    work_factor=tpot_c).tpot * s.completed  # fmt: skip
            tail = (*tail, (s.now, float(s.tpot_misses), expected))
    tail = tuple(c for c in tail if c[0] >= s.now - cfg.scale_down_window_s)
    tail_r = tail_ratio(tail, z_of(cfg.confidence), cfg.correction_max) if tail else 1.0

    # 2. The arrival rate over the window, bounded, forecast to when a replica asked for now
    #    serves (arrivals.py).
    dt = s.arrival_window_s if s.arrival_window_s > 0 else cfg.interval_s
    keep_from = s.now - cfg.forecast_window_s
    window = (*tuple(c for c in state.arrivals if c[0] - c[2] >= keep_from - 1e-9),
              (s.now, s.arrival_rate * dt, dt))  # fmt: skip
    est = estimate(window, s.now, cfg.cold_start_s + cfg.interval_s, z_of(cfg.confidence))
    backlog = s.waiting / cfg.backlog_drain_s
    cache: dict[tuple[float, float], dict[Role, int]] = {}

    def need(rate: float, prompt_factor: float) -> dict[Role, int]:
        # No arrival in the whole window: nothing to serve (the next arrival scales up).
        rate = rate + backlog if est.arrivals > 0 else backlog
        key = (rate, prompt_factor)
        if key not in cache:
            cache[key] = raw_replicas(
                cfg, m, rate, (s.mean_prompt_tokens or 1.0) * prompt_factor,
                s.mean_output_tokens or 1.0, ttft_c, tpot_c, prompt_cv2=s.prompt_cv2,
                output_cv2=s.output_cv2,
                prompts=tuple(p * prompt_factor for p in s.prompt_lengths),
                outputs=s.output_lengths, tpot_tail_ratio=tail_r)  # fmt: skip
        return cache[key]

    # The upper bound of the whole window, or a recent step if one is surely higher (the
    # window's mean lags a step; a cut must not go below what the last intervals show).
    # The prompt lengths are bounded the same way (mix.py): sized and cut at their upper
    # bound, scaled up on the estimate once it is precise, on the lower bound before.
    sized_rate = max(est.upper, est.recent_lower)
    p_trigger, p_upper = prompt_factors(s.mix_samples, s.prompt_cv2, z_of(cfg.confidence),
                                        cfg.tolerance)  # fmt: skip
    raw = need(sized_rate, p_upper)
    trigger = need(up_trigger(est, cfg.tolerance), p_trigger)

    # 3. Stabilise with the same bounds: up when the estimate needs more than the fleet (to
    #    the upper bound's count), down when even the upper bound needs fewer.
    #    A cut goes only to the highest bounded need of scale_down_window_s: the rate's noise
    #    is in the bounds, but the online corrections' is not.
    window_from = s.now - cfg.scale_down_window_s
    history = (*tuple(h for h in state.raw if h[0] >= window_from), (s.now, tuple(raw.items())))
    desired, reasons = dict(current), []
    cold_limit = cfg.cold_start_s + cfg.scale_down_window_s
    acted_up = acted = False
    for role in roles:
        cur = current[role]
        if trigger[role] > cur:
            to = max(raw[role], trigger[role])
            panic = cur == 0 or to >= cfg.panic_factor * cur
            if panic or s.now - state.last_up >= cfg.scale_up_cooldown_s:
                desired[role] = to
                acted_up = acted = True
                reasons.append(f"{role} up {cur}->{to}" + (" (panic)" if panic else ""))
            continue
        peak = max(dict(h[1]).get(role, 0) for h in history)
        if peak >= cur or s.now - state.last_action < cfg.scale_down_cooldown_s:
            continue
        if s.starting.get(role, 0) > 0 and s.now - state.last_up < cold_limit:
            # Replicas asked for are still cold: the load measured now is what the smaller
            # fleet could take, not what the bigger one will be offered, so cutting now
            # flaps (up, down, up: each "up" a new cold start). Wait until they serve, or
            # until they are overdue (a replica that never starts must not pin the fleet).
            continue
        if s.starting.get(role, 0) == 0 and s.now - state.last_cold < cfg.forecast_window_s:
            # They serve now, but the bound's window still holds what the smaller fleet
            # could take (closed-loop clients wait): cut only once it has refilled.
            continue
        if peak > 0 and (cur - peak) / cur <= cfg.tolerance:
            continue
        desired[role] = peak
        acted = True
        reasons.append(f"{role} down {cur}->{peak}")
    new_state = replace(
        state,
        arrivals=window,
        raw=history,
        ttft_correction=ttft_c,
        tpot_correction=tpot_c,
        tail=tail,
        tpot_tail_ratio=tail_r,
        last_up=s.now if acted_up else state.last_up,
        last_cold=s.now if any(s.starting.get(r, 0) > 0 for r in roles) else state.last_cold,
        last_action=s.now if acted else state.last_action,
        actions=state.actions + int(acted),
    )
    decision = Decision(
        now=s.now,
        desired=desired,
        current=current,
        raw=raw,
        forecast_rate=sized_rate + backlog,
        ttft_correction=ttft_c,
        tpot_correction=tpot_c,
        reason="; ".join(reasons) or "hold",
        tpot_tail_ratio=tail_r,
    )
    return decision, new_state
