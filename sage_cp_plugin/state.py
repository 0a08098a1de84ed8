"""Live state of the fleet, as policies and routers see it.

`InstanceState` objects are owned by the coordinator and changed only on its event loop,
between decisions; policies and routers read them synchronously (no awaits inside a
decision), so every decision sees one consistent picture. They must not change them:
the coordinator is the only writer. Rebuilding frozen copies per decision would cost
O(instances) allocations per request, which the decision-cost budget does not allow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sage_cp_plugin.cost import price
from sage_cp_plugin.types import ExecutionInstance, ExecutionInstanceType

_set = object.__setattr__


class _Watched:
    """Reports every field written to the fleet table row that keeps the object (`watch`):
    the row is reread before the next decision. Every writer is covered, whatever module it
    is in; a write costs a set insertion. (The report is written out here, not in a helper:
    that was one more Python call per write, and a request's bookkeeping writes these
    objects some twenty times.)"""

    __slots__ = ()
    watch: tuple[set[int], int] | None

    def __setattr__(self, name: str, value: Any) -> None:
        _set(self, name, value)
        try:
            watch = self.watch
        except AttributeError:  # during __init__, before `watch` is assigned
            return
        if watch is not None:
            watch[0].add(watch[1])


@dataclass(slots=True)
class ScrapedLoad(_Watched):
    """What the last `/metrics` scrape of an instance said (vLLM's own view of its load)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0  # 0..1
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    scraped_at: float = 0.0  # loop clock
    fresh: bool = False  # False when the scrape is older than the staleness bound or failed
    # Our own requests on the instance when the scrape answered: vLLM's counts beyond this
    # are work that did not come through us (never count ours twice).
    ours_at_scrape: int = 0
    interval_s: float = 1.0  # the scrape period: a residual fades to nothing over it
    # (dirty rows, row) of the `fleet_table.FleetTable` that keeps this instance's row:
    # every write is reported there (`__setattr__`), so decisions read arrays.
    watch: tuple[set[int], int] | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class Ewma:
    """Exponentially weighted mean: cheap online estimate that follows drift."""

    alpha: float = 0.2
    value: float | None = None
    count: int = 0

    def add(self, x: float) -> None:
        self.count += 1
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


@dataclass(slots=True)
class PeerSpeeds:
    """One speed class's own estimates at the other replicas of the control plane, as they
    last published them (`fleetshare`), summed over those replicas. Added to this replica's
    own, they give the estimate over every replica's requests, as one process learns it from
    all of them (each replica alone learns from its share, and replicas whose estimates
    differ rank the same instances differently)."""

    prefill_busy_s: float = 0.0
    prefill_work_tokens: float = 0.0
    decode_step_s: float = 0.0  # sum of the peers' decode-step estimates
    decode_replicas: int = 0  # how many peers have one

    def clear(self) -> None:
        self.prefill_busy_s = self.prefill_work_tokens = self.decode_step_s = 0.0
        self.decode_replicas = 0


@dataclass(slots=True)
class InstanceState(_Watched):
    """One instance: its static description plus everything the coordinator knows now."""

    instance: ExecutionInstance
    healthy: bool = True
    circuit_open: bool = False
    draining: bool = False
    in_flight: int = 0
    in_flight_tokens: int = 0  # prompt + expected output tokens of requests in flight
    scraped: ScrapedLoad = field(default_factory=ScrapedLoad)
    # Token-level load, kept exactly by `load_model` from what we sent and what came back.
    prefill_tokens_queued: int = 0  # uncached prompt tokens of requests before first token
    prefill_seqs: int = 0  # requests waiting for their first token
    decode_seqs: int = 0  # requests past their first token
    decode_kv_tokens: int = 0  # their KV footprint (prompt + expected output tokens)
    prefill_queue: deque[Any] = field(default_factory=deque)  # load_model.Booking, FCFS
    prefill_head_since: float = 0.0  # when the engine started on the head of that queue
    mean_prompt_tokens: Ewma = field(default_factory=Ewma)  # uncached tokens per request
    # Learnt online from streamed timings: seconds per prefill token (the ratio of the
    # two sums below), decode step (TPOT). With peer replicas the two that decisions read
    # are pooled with the peers' (`load_model.pool_speeds`); the two sums and
    # `decode_step_own` stay this replica's alone (what it publishes). The coordinator
    # shares these objects among instances of one speed class (`speed_class`): identical
    # engines run at one speed, and a per-instance estimate that one bad sample inflates
    # would steer traffic away from that instance and never get the samples to recover
    # (measured: 40x off, a quarter of the fleet starved).
    prefill_s_per_token: Ewma = field(default_factory=Ewma)
    decode_s_per_token: Ewma = field(default_factory=Ewma)
    prefill_busy_s: Ewma = field(default_factory=lambda: Ewma(alpha=0.05))
    prefill_work_tokens: Ewma = field(default_factory=lambda: Ewma(alpha=0.05))
    decode_step_own: Ewma = field(default_factory=Ewma)
    peer_speeds: PeerSpeeds = field(default_factory=PeerSpeeds)
    completed: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    # Load other replicas of the control plane put here, as they last published it
    # (`fleetshare`): requests, uncached prefill tokens not yet prefilled, sequences running.
    peer_in_flight: int = 0
    peer_prefill_tokens: float = 0.0
    peer_seqs: int = 0
    # (dirty rows, row) of the `fleet_table.FleetTable` that keeps this instance's row.
    watch: tuple[set[int], int] | None = field(default=None, repr=False, compare=False)

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id

    @property
    def speed_class(self) -> tuple[object, ...]:
        """Instances with equal keys are assumed to run at the same speed."""
        i = self.instance
        return (
            i.model_name,
            i.instance_type,
            i.tensor_parallel_size,
            i.pipeline_parallel_size,
            i.gpu_count,
            i.speed_hint,
        )

    def share_speeds(self, other: InstanceState) -> None:
        """Learn speeds into `other`'s estimates (same speed class)."""
        self.prefill_s_per_token = other.prefill_s_per_token
        self.decode_s_per_token = other.decode_s_per_token
        self.prefill_busy_s = other.prefill_busy_s
        self.prefill_work_tokens = other.prefill_work_tokens
        self.decode_step_own = other.decode_step_own
        self.peer_speeds = other.peer_speeds

    @property
    def capacity(self) -> int:
        """Slots: `max_concurrent_requests`, lowered by the prefill/decode configs."""
        return self.instance.slot_limit

    @property
    def has_capacity(self) -> bool:
        return self.in_flight + self.peer_in_flight < self.instance.slot_limit

    @property
    def routable(self) -> bool:
        return self.healthy and not self.circuit_open and not self.draining

    @property
    def load(self) -> float:
        """Requests outstanding as a fraction of capacity: ours, plus what vLLM reported
        beyond ours at the last scrape (ours are never counted twice)."""
        s = self.scraped
        foreign = max(0.0, s.running + s.waiting - s.ours_at_scrape) if s.fresh else 0.0
        return (self.in_flight + self.peer_in_flight + foreign) / self.instance.slot_limit

    def predicted_service_s(self, input_tokens: int, output_tokens: int) -> float:
        """Predicted time to serve a request alone on this instance, from observed speeds.

        Before any observation, a conservative prior scaled by the instance's speed hint
        (roughly an 8B model on one A100: 0.1 ms/prompt token, 20 ms/output token).
        """
        speed = self.instance.speed_hint
        prefill = self.prefill_s_per_token.get(1e-4 / speed)
        decode = self.decode_s_per_token.get(0.02 / speed)
        return prefill * input_tokens + decode * output_tokens

    def price_for(self, tokens: int, service_s: float, tier: str = "standard") -> float | None:
        """Predicted cost of a request here, in the instance's currency; None when unpriced."""
        # A request shares the instance with others: predict its time share of the GPUs.
        share = 1.0 / max(1, min(self.instance.slot_limit, 8))
        return price(self.instance, tokens=tokens, gpu_seconds=service_s * share, tier=tier)


@dataclass(slots=True)
class FleetSnapshot:
    """All instances, indexed; what a decision may look at besides its candidates."""

    states: dict[str, InstanceState] = field(default_factory=dict)
    now: float = 0.0
    # What each instance's prefix cache holds (a `routing.cache_view.PrefixCacheView`:
    # approximate or from KV events); None = unknown. Typed loosely: routing imports this
    # module, so naming the protocol here would make an import cycle.
    cache_view: Any = None
    # (index among the live replicas of the control plane, their number), kept by
    # `fleetshare`; where tie-break rotations start (`routing.rotation`). One process: (0, 1).
    replica: tuple[int, int] = (0, 1)

    def __iter__(self) -> Iterator[InstanceState]:
        return iter(self.states.values())

    def __len__(self) -> int:
        return len(self.states)

    def get(self, instance_id: str) -> InstanceState | None:
        return self.states.get(instance_id)

    def models(self) -> list[str]:
        out: set[str] = set()
        for s in self.states.values():
            out.update(s.instance.served_models)
        return sorted(out)

    def of_type(self, kind: ExecutionInstanceType) -> list[InstanceState]:
        return [s for s in self.states.values() if s.instance.instance_type == kind]

    def total_in_flight(self) -> int:
        return sum(s.in_flight for s in self.states.values())

    def total_capacity(self, states: Iterable[InstanceState] | None = None) -> int:
        return sum(s.capacity for s in (states if states is not None else self.states.values()))
