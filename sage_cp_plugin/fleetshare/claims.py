"""Request-id claims across replicas: one run per `x-request-id`, whichever replica a
client (a batch shard resending a line, a retrying proxy) sends it to.

A replica given a request with an id it does not know claims the id in the store (one
round trip; only requests that carry an id pay it). Then:
- the claim is its own: it runs the request (`Run("mine")`);
- a live peer holds it (heard within the peers' TTL, with the address it serves on): the
  request is handed to that peer (`HandOver`), which joins its run or answers from the
  result it retained, so the client gets the one run's answer;
- the holder is dead (not heard within the TTL) or unreachable: the claim is moved to this
  replica only if the dead one still holds it (another replica may have taken it first)
  and the request runs here (`Run("taken_over")`), or goes to whoever took it;
- the store is unreachable: it runs here (`Run("unshared")`), counted, as every other
  shared thing degrades to this replica's own view.

Claims expire after `ttl_s` (Redis PX); nothing is kept per request in the process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .peers import PeerLoads
from .store import FleetStateStore, StoreUnavailable

# How long a claim lives: it must outlive the run (a resend meanwhile is handed over) and
# should cover the owner's retained result (a late resend gets that answer). The batch
# client waits 600 s for an answer.
DEFAULT_CLAIM_TTL_S = 600.0
OUTCOMES = ("mine", "handed_over", "taken_over", "unshared")


@dataclass(frozen=True)
class Run:
    """Run the request here; `why` is one of OUTCOMES' run reasons."""

    why: str


@dataclass(frozen=True)
class HandOver:
    owner: str
    address: str


ClaimOutcome = Run | HandOver


def resolve(holder: str, me: str, address_of: Callable[[str], str | None]) -> ClaimOutcome | None:
    """What a claim held by `holder` means here; None: the holder is dead (take it over)."""
    if holder == me:
        return Run("mine")
    address = address_of(holder)
    return None if address is None else HandOver(holder, address)


class RequestClaims:
    def __init__(
        self,
        store: FleetStateStore,
        replica_id: str,
        peers: PeerLoads,
        now: Callable[[], float],
        connected: Callable[[], bool],
        ttl_s: float = DEFAULT_CLAIM_TTL_S,
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self.peers = peers
        self.now = now
        self.connected = connected
        self.ttl_s = ttl_s
        self.counts = dict.fromkeys(OUTCOMES, 0)

    def _address(self, replica: str) -> str | None:
        return self.peers.address(replica, self.now())

    def _count(self, outcome: ClaimOutcome) -> ClaimOutcome:
        self.counts["handed_over" if isinstance(outcome, HandOver) else outcome.why] += 1
        return outcome

    async def claim(self, request_id: str) -> ClaimOutcome:
        if not self.connected():
            # Known down: no round trip (it would wait for the socket timeout per request).
            return self._count(Run("unshared"))
        try:
            holder = await self.store.claim(request_id, self.replica_id, self.ttl_s)
        except StoreUnavailable:
            return self._count(Run("unshared"))
        outcome = resolve(holder, self.replica_id, self._address)
        if outcome is None:
            return await self.take_over(request_id, holder)
        return self._count(outcome)

    async def take_over(self, request_id: str, dead: str) -> ClaimOutcome:
        """`dead` holds the claim but is not heard, or could not be reached: claim it here
        unless a third replica has already (then that one runs it)."""
        try:
            holder = await self.store.take_over_claim(request_id, dead, self.replica_id, self.ttl_s)
        except StoreUnavailable:
            return self._count(Run("unshared"))
        outcome = resolve(holder, self.replica_id, self._address)
        if outcome is None or outcome == Run("mine"):
            return self._count(Run("taken_over"))
        return self._count(outcome)
