"""What the other replicas put on each instance: their last published load, summed into
`InstanceState.peer_*`, forgotten when a replica falls silent for the TTL (it died, or we
lost Redis and can no longer hear it: then we route on our own view)."""

from __future__ import annotations

from typing import Any

from sage_cp_plugin import load_model
from sage_cp_plugin.routing.rotation import replica_slot
from sage_cp_plugin.state import FleetSnapshot

# The field of a load record that holds the address the replica serves on (where peers
# hand it the requests whose id it has claimed, claims.py); not an instance id.
ADDRESS_FIELD = "~addr"


def own_load(fleet: FleetSnapshot, now: float) -> dict[str, list[float]]:
    """This replica's load per instance: [in_flight, prefill tokens ahead, sequences,
    healthy (1/0)], and on the first instance of each speed class this replica's own speed
    estimates of the class: [..., prefill busy seconds, prefill work tokens, decode step
    (0: none yet; an observed step is > 0)] (`PeerSpeeds`). Compact: it goes to every peer
    several times a second, and a fleet of one kind of engine carries one set of speeds."""
    out: dict[str, list[float]] = {}
    classes: set[int] = set()
    for s in fleet:
        row = [
            s.in_flight,
            round(load_model.own_prefill_ahead(s, now), 1),
            s.prefill_seqs + s.decode_seqs,
            1 if s.healthy and not s.circuit_open else 0,
        ]
        if id(s.peer_speeds) not in classes:
            classes.add(id(s.peer_speeds))
            row += [
                s.prefill_busy_s.get(0.0),
                s.prefill_work_tokens.get(0.0),
                s.decode_step_own.get(0.0),
            ]
        out[s.instance_id] = row
    return out


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
        self._apply_speeds(fleet)

    def _apply_speeds(self, fleet: FleetSnapshot) -> None:
        """Sum the peers' own speed estimates per speed class (as this replica groups the
        instances: one set per peer and class) and re-pool the estimates decisions read."""
        classes = {id(s.peer_speeds): s for s in fleet}
        for s in classes.values():
            s.peer_speeds.clear()
        for _, load in self.by_replica.values():
            seen: set[int] = set()
            for iid, v in load.items():
                st = fleet.get(iid)
                if st is None or len(v) < 7 or id(st.peer_speeds) in seen:
                    continue
                seen.add(id(st.peer_speeds))
                p = st.peer_speeds
                p.prefill_busy_s += float(v[4])
                p.prefill_work_tokens += float(v[5])
                if v[6] > 0:
                    p.decode_step_s += float(v[6])
                    p.decode_replicas += 1
        for s in classes.values():
            load_model.pool_speeds(s)

    def address(self, replica: str, now: float) -> str | None:
        """Where a live peer serves (None: not heard within the TTL, or it gave none)."""
        heard = self.by_replica.get(replica)
        if heard is None or now - heard[0] > self.ttl_s:
            return None
        addr = heard[1].get(ADDRESS_FIELD)
        return addr if isinstance(addr, str) and addr else None

    def peers_say_down(self, instance_id: str) -> bool:
        """Every live peer reports the instance unhealthy (a new replica starts so)."""
        votes = [
            load[instance_id][3]
            for _, load in self.by_replica.values()
            if instance_id in load and len(load[instance_id]) > 3
        ]
        return bool(votes) and not any(votes)
