"""Instance health: active `/health` probes and passive outlier ejection (circuit breaker).

Active: every instance — registered before or after start — is probed concurrently each
`interval_s`, each probe offset by a random jitter so a large fleet is not hit in lock
step; `unhealthy_threshold` consecutive failures mark it unhealthy, `healthy_threshold`
consecutive successes bring it back.
Passive: `failure_threshold` consecutive request failures open the instance's circuit for
`cooldown_s`; then it is half-open: one request (or probe) may go through; success closes
the circuit, failure re-opens it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.state import InstanceState

logger = logging.getLogger(__name__)


class HealthConfig(BaseModel):
    """Active probing and the circuit breaker (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    jitter: float = Field(0.2, ge=0, le=1)  # fraction of the interval
    unhealthy_threshold: int = Field(2, ge=1)
    healthy_threshold: int = Field(1, ge=1)
    failure_threshold: int = Field(3, ge=1)
    cooldown_s: float = Field(10.0, ge=0)


@dataclass
class InstanceHealth:
    probe_failures: int = 0
    probe_successes: int = 0
    circuit_opened_at: float | None = None
    half_open: bool = False
    transitions: list[tuple[float, str]] = field(default_factory=list)


class HealthMonitor:
    def __init__(
        self,
        config: HealthConfig,
        probe: Callable[[str], Awaitable[bool]],
        on_change: Callable[[], None],
        seed: int = 0,
    ) -> None:
        self.config = config
        self._probe = probe
        self._on_change = on_change
        # Seeded, as the scraper's: the jitter only has to spread the probes of one round,
        # and an unseeded one made replays on the virtual clock differ from run to run
        # (probes interleave with the replayed requests; events at equal times reorder).
        self._rng = random.Random(seed)
        self.health: dict[str, InstanceHealth] = {}

    def _h(self, instance_id: str) -> InstanceHealth:
        return self.health.setdefault(instance_id, InstanceHealth())

    # -- active ----------------------------------------------------------------------------
    async def probe_all(self, states: list[InstanceState]) -> None:
        await asyncio.gather(*(self._probe_one(s) for s in states), return_exceptions=True)

    async def _probe_one(self, state: InstanceState) -> None:
        cfg = self.config
        await asyncio.sleep(self._rng.uniform(0, cfg.jitter * cfg.interval_s))
        ok = await self._probe(state.instance_id)
        self.record_probe(state, ok)

    def record_probe(self, state: InstanceState, ok: bool) -> None:
        cfg, h = self.config, self._h(state.instance_id)
        loop_now = asyncio.get_running_loop().time()
        if ok:
            h.probe_failures = 0
            h.probe_successes += 1
            if not state.healthy and h.probe_successes >= cfg.healthy_threshold:
                self._set_healthy(state, True, loop_now, "probe succeeded")
            if state.circuit_open and self._cooled(h, loop_now):
                # A passing probe after the cooldown is the half-open trial.
                self._close_circuit(state, loop_now, "probe succeeded after cooldown")
        else:
            h.probe_successes = 0
            h.probe_failures += 1
            if state.healthy and h.probe_failures >= cfg.unhealthy_threshold:
                self._set_healthy(state, False, loop_now, f"{h.probe_failures} failed probes")

    async def run(self, states: Callable[[], list[InstanceState]]) -> None:
        while True:
            await self.probe_all(states())
            now = asyncio.get_running_loop().time()
            for s in states():
                self.maybe_half_open(s, now)
            await asyncio.sleep(self.config.interval_s)

    # -- passive ---------------------------------------------------------------------------
    def record_result(self, state: InstanceState, ok: bool, now: float) -> None:
        h = self._h(state.instance_id)
        if ok:
            state.consecutive_failures = 0
            if state.circuit_open or h.half_open:
                self._close_circuit(state, now, "request succeeded")
            return
        state.consecutive_failures += 1
        if h.half_open or state.consecutive_failures >= self.config.failure_threshold:
            if not state.circuit_open:
                state.circuit_open = True
                h.circuit_opened_at = now
                h.half_open = False
                h.transitions.append((now, "circuit open"))
                logger.warning(
                    "instance %s: circuit opened after %d consecutive failures (cooldown %.1fs)",
                    state.instance_id,
                    state.consecutive_failures,
                    self.config.cooldown_s,
                )
                self._on_change()

    def maybe_half_open(self, state: InstanceState, now: float) -> bool:
        """After the cooldown, let one trial through (called by the dispatcher too)."""
        h = self._h(state.instance_id)
        if state.circuit_open and self._cooled(h, now):
            state.circuit_open = False
            h.half_open = True
            h.transitions.append((now, "half-open"))
            self._on_change()
            return True
        return False

    def next_half_open_at(self, state: InstanceState) -> float | None:
        h = self._h(state.instance_id)
        if not state.circuit_open or h.circuit_opened_at is None:
            return None
        return h.circuit_opened_at + self.config.cooldown_s

    def _cooled(self, h: InstanceHealth, now: float) -> bool:
        return (
            h.circuit_opened_at is not None and now - h.circuit_opened_at >= self.config.cooldown_s
        )

    def _close_circuit(self, state: InstanceState, now: float, why: str) -> None:
        h = self._h(state.instance_id)
        state.circuit_open = False
        state.consecutive_failures = 0
        h.half_open = False
        h.circuit_opened_at = None
        h.transitions.append((now, "circuit closed"))
        logger.info("instance %s: circuit closed (%s)", state.instance_id, why)
        self._on_change()

    def _set_healthy(self, state: InstanceState, healthy: bool, now: float, why: str) -> None:
        state.healthy = healthy
        state.instance.is_healthy = healthy
        state.instance.health_status = "healthy" if healthy else "unhealthy"
        self._h(state.instance_id).transitions.append((now, "healthy" if healthy else "unhealthy"))
        log = logger.info if healthy else logger.warning
        log("instance %s: %s (%s)", state.instance_id, "healthy" if healthy else "unhealthy", why)
        self._on_change()
