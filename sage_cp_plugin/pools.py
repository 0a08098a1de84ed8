"""Which instances may serve a request, and whether one has room for it now.

A pool is (model, embedding?). Membership is cached until the fleet's membership changes,
so a decision does not rescan the fleet; health and capacity are checked per decision.
"""

from __future__ import annotations

from sage_cp_plugin.concurrency_limit import ConcurrencyLimits
from sage_cp_plugin.fleet_table import FleetTable
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import FleetSnapshot, InstanceState
from sage_cp_plugin.ttft_reserve import keeps_due

Pool = tuple[str | None, bool]


class InstancePools:
    def __init__(
        self,
        fleet: FleetSnapshot,
        *,
        urgent_headroom: float = 0.0,
        limits: ConcurrencyLimits | None = None,
    ) -> None:
        self.fleet = fleet
        # Below the slot limit, as many requests per instance as its engine starts without
        # queueing them (concurrency_limit.py): the backlog then waits in the coordinator's
        # queue, where the policy orders it, instead of in the engine's own queue.
        self.limits = limits
        # Slots beyond an instance's slot limit (a fraction of it) that only urgent requests
        # may use: interactive work then never waits behind a full instance for a free slot.
        self.urgent_headroom = urgent_headroom
        self._pools: dict[Pool, list[InstanceState]] = {}
        # The fleet as arrays (fleet_table.py): what a decision reads in the common case
        # instead of every instance; None reads the states one by one (the same answers).
        self.table: FleetTable | None = FleetTable(fleet)

    def invalidate(self) -> None:
        """The fleet's membership changed (an instance was added or removed)."""
        self._pools.clear()
        if self.table is not None:
            self.table.invalidate()

    def eligible(self, pool: Pool) -> list[InstanceState]:
        """Instances that serve a pool (model, embedding?), whatever their health."""
        cached = self._pools.get(pool)
        if cached is None:
            model, embedding = pool
            cached = [
                s
                for s in self.fleet.states.values()
                if s.instance.is_embedding == embedding and s.instance.serves(model)
            ]
            self._pools[pool] = cached
        return cached

    def has_room(self, s: InstanceState, item: QueuedRequest) -> bool:
        """Whether `s` can take `item` now: its slots (or its adaptive limit, when lower, and
        then only while its predicted prefill queue is short), plus the urgent headroom for
        urgent work; a decode instance slower per token than
        its `target_latency_ms` takes no new request until it is idle."""
        inst = s.instance
        cap = inst.slot_limit
        if self.limits is not None:
            cap = min(cap, self.limits.of(s).current)
        if item.urgent:
            cap += max(1, int(cap * self.urgent_headroom))
        if s.in_flight + s.peer_in_flight >= cap:  # slots are shared with peer replicas
            return False
        if self.limits is not None and not item.urgent and not self._prefill_gate(s, item):
            return False
        target = inst.decode_target_s
        if target is not None and s.in_flight > 0:
            tpot_s = s.decode_s_per_token.value
            if tpot_s is not None and tpot_s > target:
                return False
        return True

    def opens_as_prefill_drains(self, s: InstanceState, item: QueuedRequest) -> bool:
        """`s` has no room for `item` only because the prefill queued on it would make it
        wait (`prefill_fits`): room that opens as that queue drains, at a pace the load model
        predicts, not at some request's unknown finish."""
        if self.limits is None or item.urgent:
            return False
        cap = min(s.instance.slot_limit, self.limits.of(s).current)
        if s.in_flight + s.peer_in_flight >= cap or self._prefill_gate(s, item):
            return False
        target = s.instance.decode_target_s
        tpot_s = s.decode_s_per_token.value
        return not (target is not None and tpot_s is not None and tpot_s > target)

    def _prefill_gate(self, s: InstanceState, item: QueuedRequest) -> bool:
        """The adaptive limit's prefill gates pass `item` on `s`: the prefill queued on `s`
        starts within a few steps (`prefill_fits`) and, with the TTFT reserve on, a request
        without a TTFT objective leaves room for the objectives being served
        (`TTFTReserve.batch_fits`). With the reserve on, a request with a TTFT objective is
        held by neither on an engine that orders its queue by priority: there it goes ahead
        of what waits, so holding it here would only spend its objective (on an engine in
        arrival order it would wait behind that queue: the step-counted gate still holds it);
        it is held only where it would make a request waiting there for its first token late
        (`ttft_reserve.keeps_due`). A demoted request is work without an objective here."""
        limits = self.limits
        assert limits is not None
        now = self.fleet.now
        reserve = limits.reserve
        if reserve is None:
            return limits.prefill_fits(s, now)
        if item.request.ttft_slo_ms is not None and not item.demoted:
            if s.instance.scheduling_policy != "priority" and not limits.prefill_fits(s, now):
                return False
            return keeps_due(s, item.input_tokens, now)
        instances = len(self.eligible(item.pool))
        return limits.prefill_fits(s, now) and reserve.batch_fits(
            s, item.input_tokens, now, instances
        )

    def list_models(self) -> list[str]:
        return self.fleet.models()
