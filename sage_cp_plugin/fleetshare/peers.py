"""What the other replicas put on each instance: their last published load, summed into
`InstanceState.peer_*`, forgotten when a replica falls silent for the TTL (it died, or we
lost Redis and can no longer hear it: then we route on our own view)."""

from __future__ import annotations

from typing import Any

from sage_cp_plugin import load_model
from sage_cp_plugin.routing.rotation import replica_slot
from sage_cp_plugin.state import FleetSnapshot


def own_load(fleet: FleetSnapshot, now: float) -> dict[str, list[float]]:
    """This replica's load per instance: [in_flight, prefill tokens ahead, sequences,
    healthy (1/0)]. Compact: it goes to every peer several times a second."""
    return {
        s.instance_id: [
            s.in_flight,
            round(load_model.own_prefill_ahead(s, now), 1),
            s.prefill_seqs + s.decode_seqs,
            1 if s.healthy and not s.circuit_open else 0,
        ]
        for s in fleet
    }


class PeerLoads:
    def __init__(self, replica_id: str, ttl_s: float) -> None:
        self.replica_id = replica_id
        self.ttl_s = ttl_s
        self.by_replica: dict[str, tuple[float, dict[str, list[float]]]] = {}

    def update(self, replica: str, load: dict[str, Any], now: float) -> None:
        if replica != self.replica_id:
            self.by_replica[replica] = (now, load)

    def expire(self, now: float) -> list[str]:
        gone = [r for r, (at, _) in self.by_replica.items() if now - at > self.ttl_s]
        for r in gone:
            del self.by_replica[r]
        return gone

    def apply(self, fleet: FleetSnapshot) -> None:
        """Sum the peers' loads into the fleet view (decisions read them from there), and
        place this replica among the live ones (where its tie-break rotations start)."""
        fleet.replica = replica_slot(self.replica_id, self.by_replica)
        for s in fleet:
            s.peer_in_flight = 0
            s.peer_prefill_tokens = 0.0
            s.peer_seqs = 0
        for _, load in self.by_replica.values():
            for iid, v in load.items():
                st = fleet.get(iid)
                if st is None or len(v) < 3:
                    continue
                st.peer_in_flight += int(v[0])
                st.peer_prefill_tokens += float(v[1])
                st.peer_seqs += int(v[2])

    def peers_say_down(self, instance_id: str) -> bool:
        """Every live peer reports the instance unhealthy (a new replica starts so)."""
        votes = [
            load[instance_id][3]
            for _, load in self.by_replica.values()
            if instance_id in load and len(load[instance_id]) > 3
        ]
        return bool(votes) and not any(votes)
