"""Per-instance concurrency limits that keep each engine's own queue short.

Why: vLLM queues whatever it is sent in its own order (arrival, or a priority), so when the
coordinator forwards every request up to a static cap the backlog waits inside the engines
and the scheduling policy has nothing left to order. The limit admits to an instance only
as many requests as it starts without queueing; the rest wait in the coordinator's queue,
where the policy decides what runs next.

How (a gradient controller in the style of Netflix concurrency-limits' Gradient2 and Envoy's
adaptive concurrency filter, with the engine's queueing delay as the signal):
- each finished request gives a sample of the delay it spent waiting in the engine before
  its prefill started: its engine-side TTFT minus the TTFT it would have had alone (the
  token-level load model's `unloaded_ttft_s`: its prompt at the instance's learnt prefill
  speed, at least one step; the one prefill-speed estimator of the coordinator);
- the tolerated delay is `tolerance_steps` engine steps (one step to be admitted, one for the
  step in progress), with the step time measured on that instance (its inter-token time;
  a prefill instance that has decoded nothing runs chunks of prefill: one at its learnt
  prefill speed);
- gradient = clamp(tolerated / sample, 0.5, 1); new limit = limit * gradient + sqrt(limit),
  smoothed. Without queueing the limit grows by about sqrt(limit) per sample while it is
  used; with queueing it shrinks towards the point where the sqrt(limit) allowance balances
  it. It never exceeds the instance's `max_concurrent_requests` nor drops below 1.
Nothing here is fitted to a workload: the only scale is the instance's own step time.

The limit counts requests and learns one TTFT late, so a burst that arrives while it is high
(grown during a quiet spell) would all be forwarded at once and queue inside the engines,
where the policy cannot reorder it. So admission is also gated on the load model's
prediction, at once: an instance takes a new request only while the prefill already queued
on it would start within the same tolerated delay (`prefill_fits`; an instance with nothing
queued always may). Prediction gates now; observation corrects the limit afterwards.

The signal is observed, one TTFT late; the load model's prediction is the reference it is
measured against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sage_cp_plugin import load_model
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.ttft_reserve import TTFTReserve
from sage_cp_plugin.types import ExecutionInstanceType


@dataclass(frozen=True, slots=True)
class LimitConfig:
    tolerance_steps: float = 2.0  # engine steps a request may wait there before its prefill
    smoothing: float = 0.2  # weight of a new limit estimate
    min_limit: float = 1.0

    def __post_init__(self) -> None:
        if self.tolerance_steps <= 0:
            raise ValueError(f"tolerance_steps must be positive, got {self.tolerance_steps}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.min_limit < 1:
            raise ValueError(f"min_limit must be >= 1, got {self.min_limit}")


@dataclass(slots=True)
class AdaptiveLimit:
    """The limit of one instance and what it learnt."""

    max_limit: int
    config: LimitConfig = field(default_factory=LimitConfig)
    limit: float = 0.0  # set to max_limit on creation
    samples: int = 0
    last_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, got {self.max_limit}")
        if self.limit <= 0:
            self.limit = float(self.max_limit)

    @property
    def current(self) -> int:
        """Requests the instance may hold now."""
        return max(1, int(self.limit))

    def allows(self, in_flight: int) -> bool:
        return in_flight < self.current

    def observe(
        self, engine_ttft_s: float, unloaded_ttft_s: float, step_s: float, in_flight: int
    ) -> None:
        """One finished request: `engine_ttft_s` from sending it to its first token,
        `unloaded_ttft_s` the load model's TTFT for it with nothing ahead, `step_s` the
        instance's current step time, `in_flight` its requests when it ended."""
        if step_s <= 0:
            return  # no decode observed yet: no scale to judge a delay by
        delay = max(0.0, engine_ttft_s - unloaded_ttft_s)
        self.samples += 1
        self.last_delay_s = delay
        tolerated = self.config.tolerance_steps * step_s
        gradient = 1.0 if delay <= tolerated else max(0.5, tolerated / delay)
        if gradient >= 1.0 and in_flight < self.limit / 2:
            return  # the limit is not what holds traffic back: no evidence to grow it
        estimate = self.limit * gradient + math.sqrt(self.limit)
        s = self.config.smoothing
        self.limit = min(
            float(self.max_limit), max(self.config.min_limit, (1 - s) * self.limit + s * estimate)
        )


class ConcurrencyLimits:
    """The adaptive limits of a fleet, keyed by instance id (created on first use)."""

    def __init__(self, config: LimitConfig | None = None, *, reserve: bool = True) -> None:
        self.config = config or LimitConfig()
        self._limits: dict[str, AdaptiveLimit] = {}
        # Prefill room kept for requests with a TTFT objective (ttft_reserve.py); None: the
        # step-counted gate (`prefill_fits`) alone, for every request.
        self.reserve = TTFTReserve() if reserve else None

    def of(self, state: InstanceState) -> AdaptiveLimit:
        lim = self._limits.get(state.instance_id)
        if lim is None or lim.max_limit != state.capacity:
            lim = AdaptiveLimit(state.capacity, self.config)
            self._limits[state.instance_id] = lim
        return lim

    def allows(self, state: InstanceState) -> bool:
        return self.of(state).allows(state.in_flight)

    def tolerated_wait_s(self, state: InstanceState) -> float:
        """The prefill wait `prefill_fits` lets a new request have on `state`: two of its
        measured steps; before one is measured, two of the load model's prior steps (a run
        that opens with a burst has not decoded anything yet, and without a gate the whole
        burst would go to the engines in arrival order). A prefill instance of a disaggregated
        fleet may never decode (its requests leave after their first token): its step is
        then the one it runs, a chunk of prefill at its learnt speed. Without it, its queue
        would never be gated and a burst would wait there, in the engine's order, behind
        seconds of prompts, instead of in the coordinator's queue."""
        step = state.decode_s_per_token.get(0.0)
        if step <= 0 and state.instance.instance_type is ExecutionInstanceType.PREFILLING:
            step = load_model.prefill_time_s(state, load_model.chunk_tokens(state))
        elif step <= 0:
            # Nothing decoded yet (a cold start): the load model's prior step stands in, so
            # a burst that opens a run waits in the coordinator's queue like any other.
            step = load_model.decode_step_s(state)
        return self.config.tolerance_steps * step

    def prefill_fits(self, state: InstanceState, now: float) -> bool:
        """The load model's predicted wait before a new request's prefill starts on `state`
        is within `tolerance_steps` of its step time (always true with nothing queued
        there)."""
        if state.prefill_seqs <= 0:
            return True
        tolerated = self.tolerated_wait_s(state)
        if tolerated <= 0:
            return True
        return load_model.queue_wait_s(state, now) <= tolerated

    def observe(self, state: InstanceState, engine_ttft_s: float, prompt_tokens: int) -> None:
        step_s = state.decode_s_per_token.get(0.0)
        unloaded = load_model.unloaded_ttft_s(state, prompt_tokens)
        self.of(state).observe(engine_ttft_s, unloaded, step_s, state.in_flight)

    def forget(self, instance_id: str) -> None:
        self._limits.pop(instance_id, None)

    def describe(self) -> dict[str, int]:
        return {iid: lim.current for iid, lim in self._limits.items()}
