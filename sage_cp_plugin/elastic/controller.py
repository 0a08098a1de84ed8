"""The autoscaling shell: every ``interval_s`` it turns the coordinator's counters into a
``LoadSample``, asks the pure ``autoscaler.decide`` what to do, and hands a changed decision
to the configured actuator. Gauges and the decision log are read from here."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.elastic.actuators import Actuator
from sage_cp_plugin.elastic.autoscaler import (
    ROLES_OF,
    AutoscalerConfig,
    Decision,
    LoadSample,
    Role,
    ScalerState,
    decide,
)
from sage_cp_plugin.elastic.capacity import StepModel
from sage_cp_plugin.elastic.tpot import summarise
from sage_cp_plugin.metrics import MetricsCollector
from sage_cp_plugin.pending import PendingQueue
from sage_cp_plugin.state import FleetSnapshot

logger = logging.getLogger(__name__)

# The simulator's default engine (Llama-3.1-8B, H100, TP1; docs/architecture.md §8).
DEFAULT_STEP_MODEL = StepModel.from_sim(5.75, 17.25, 6.0)


class AutoscalingSettings(BaseModel):
    """``ControlPlaneOptions.autoscaling``: used when ``enable_auto_scaling=True``."""

    model_config = ConfigDict(extra="forbid")
    model: str = ""  # the model to scale; "" = the one model the fleet serves
    actuator: str = "metrics"
    actuator_options: dict[str, Any] = Field(default_factory=dict)
    step_model: StepModel = DEFAULT_STEP_MODEL
    scaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)


_ROLE_OF_TYPE: dict[str, Role] = {"general": "general", "prefill": "prefill", "decode": "decode"}


def _tail_mean(values: deque[float], n: int) -> float | None:
    n = min(n, len(values))
    if n <= 0:
        return None
    return sum(itertools.islice(reversed(values), n)) / n / 1e3  # ms -> s


def _tail_se(values: deque[float], n: int) -> float | None:
    """Standard error of ``_tail_mean`` (sample standard deviation / sqrt(count), s); None
    until two values make a spread measurable (the mean is then taken as exact)."""
    n = min(n, len(values))
    if n < 2:
        return None
    tail = np.fromiter(itertools.islice(reversed(values), n), dtype=float, count=n)
    return float(tail.std(ddof=1)) / math.sqrt(n) / 1e3  # ms -> s


def _over(values: deque[float], n: int, limit: float) -> int:
    """How many of the last ``n`` values exceed ``limit`` (requests of one output token have
    no TPOT, so the last ``n`` may reach back a little: the count stays an estimate)."""
    return sum(v > limit for v in itertools.islice(reversed(values), min(n, len(values))))


def _cv2(n: int, mean: float, sum_sq: float) -> float:
    """Squared coefficient of variation from a count, a mean and a sum of squares; 1 (the
    exponential's) until two requests and a positive mean make it measurable."""
    if n < 2 or mean <= 0:
        return 1.0
    return max(0.0, sum_sq / n - mean * mean) / (mean * mean)


class AutoscaleController:
    def __init__(
        self,
        settings: AutoscalingSettings,
        actuator: Actuator,
        *,
        fleet: FleetSnapshot,
        metrics: MetricsCollector,
        queue: PendingQueue,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.actuator = actuator
        self.fleet = fleet
        self.metrics = metrics
        self.queue = queue
        self.clock = clock
        self.state = ScalerState()
        self.last: Decision | None = None
        self.log: deque[tuple[str, Decision]] = deque(maxlen=500)
        self._ids = itertools.count(1)
        self._seen: tuple[float, int, int, int, int, int, int] | None = None
        self._means = (1.0, 1.0)
        self._cv2 = (1.0, 1.0)
        self._samples: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
        self._mix_n = 0  # completions the mix above is from (its bounds' sample size)

    @property
    def model(self) -> str:
        if self.settings.model:
            return self.settings.model
        models = self.fleet.models()
        return models[0] if len(models) == 1 else ""

    def ready(self, model: str) -> dict[Role, int]:
        out: dict[Role, int] = {}
        for s in self.fleet.states.values():
            role = _ROLE_OF_TYPE.get(s.instance.instance_type.value)
            if role is not None and not s.draining and s.healthy:
                if not model or model in s.instance.served_models:
                    out[role] = out.get(role, 0) + 1
        return out

    def sample(self) -> LoadSample:
        now, mc = self.clock(), self.metrics
        seen = (now, mc.total, mc.completed, mc.prompt_tokens, mc.output_tokens,
                mc.prompt_tokens_sq, mc.output_tokens_sq)  # fmt: skip
        prev = self._seen or seen
        self._seen = seen
        dt = now - prev[0]
        done = mc.completed - prev[2]
        if done > 0:
            self._means = ((mc.prompt_tokens - prev[3]) / done, (mc.output_tokens - prev[4]) / done)
            self._cv2 = (_cv2(done, self._means[0], mc.prompt_tokens_sq - prev[5]),
                         _cv2(done, self._means[1], mc.output_tokens_sq - prev[6]))  # fmt: skip
        if done > 0:
            lengths = list(mc.recent_lengths)
            self._samples = (summarise([p for p, _ in lengths]),
                             summarise([o for _, o in lengths]))  # fmt: skip
            self._mix_n = len(lengths)
            if len(lengths) >= 2:
                # The means and cv^2 of the same recent requests the quantiles come from: an
                # interval's few requests of a heavy-tailed mix move its mean prompt by tens of
                # percent, and the planner's count with it (an up on noise alone).
                ps = np.array([p for p, _ in lengths], dtype=float)
                os_ = np.array([o for _, o in lengths], dtype=float)
                self._means = (float(ps.mean()), float(os_.mean()))
                self._cv2 = (_cv2(len(ps), self._means[0], float((ps * ps).sum())),
                             _cv2(len(os_), self._means[1], float((os_ * os_).sum())))  # fmt: skip
        model = self.model
        ready = self.ready(model)
        asked = self.actuator.target(model) or {}
        return LoadSample(
            now=now,
            arrival_rate=(mc.total - prev[1]) / dt if dt > 0 else 0.0,
            mean_prompt_tokens=self._means[0],
            mean_output_tokens=self._means[1],
            waiting=len(self.queue),
            completed=done,
            observed_ttft_s=_tail_mean(mc.ttft, done),
            observed_tpot_s=_tail_mean(mc.tpot, done),
            observed_ttft_se_s=_tail_se(mc.ttft, done),
            observed_tpot_se_s=_tail_se(mc.tpot, done),
            tpot_misses=_over(mc.tpot, done, self.settings.scaler.tpot_target_s * 1e3),
            prompt_cv2=self._cv2[0],
            output_cv2=self._cv2[1],
            prompt_lengths=self._samples[0],
            output_lengths=self._samples[1],
            mix_samples=self._mix_n,
            ready=ready,
            starting={r: max(0, n - ready.get(r, 0)) for r, n in asked.items()},
            arrival_window_s=dt,
        )

    async def step(self) -> Decision | None:
        s = self.sample()
        if s.now == (self.last.now if self.last else None):
            return None
        cfg = self.settings
        decision, self.state = decide(cfg.scaler, cfg.step_model, s, self.state)
        self.last = decision
        if decision.changed:
            did = f"{self.model or 'fleet'}-{next(self._ids)}"
            self.log.append((did, decision))
            logger.info("autoscaling %s: %s", did, decision.reason)
            try:
                await self.actuator.apply(self.model, decision, did)
            except Exception:
                logger.exception("actuator %s failed to apply %s", self.actuator.name, did)
        return decision

    async def run(self) -> None:
        self.sample()  # the first counters; rates are measured from here
        while True:
            await asyncio.sleep(self.settings.scaler.interval_s)
            await self.step()

    def roles(self) -> tuple[Role, ...]:
        return ROLES_OF[self.settings.scaler.mode]
