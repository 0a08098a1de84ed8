"""Which models the fleet can serve right now, for `/health` and `/v1/models`.

A model is available when at least one instance that serves it (of its kind: generation or
embedding) is routable: healthy, circuit closed, not draining. Reporting "ok" while a
model's every instance has its circuit open would send load balancers and clients into
certain 503s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sage_cp_plugin.state import InstanceState


@dataclass
class ModelAvailability:
    name: str
    kind: str  # "generation" | "embedding"
    instances: int = 0
    routable: int = 0

    @property
    def available(self) -> bool:
        return self.routable > 0

    def reason(self, states: Iterable[InstanceState]) -> str:
        """Why no instance can take the model, instance by instance."""
        why = [
            f"{s.instance_id}: "
            + ("draining" if s.draining else "circuit open" if s.circuit_open else "unhealthy")
            for s in states
            if self.name in s.instance.served_models
            and s.instance.is_embedding == (self.kind == "embedding")
        ]
        return ", ".join(why) or "no instance"


def model_availability(states: Iterable[InstanceState]) -> dict[str, ModelAvailability]:
    out: dict[str, ModelAvailability] = {}
    for s in states:
        kind = "embedding" if s.instance.is_embedding else "generation"
        for name in s.instance.served_models:
            entry = out.setdefault(name, ModelAvailability(name, kind))
            if entry.kind != kind:
                continue  # a name served as both kinds: the first kind seen describes it
            entry.instances += 1
            entry.routable += int(s.routable)
    return dict(sorted(out.items()))
