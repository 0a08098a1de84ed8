"""Actuators: who carries an autoscaling decision out (``sage_cp_register_actuators`` hook).

- ``metrics``: nothing but the Prometheus gauges (desired/current replicas, demand), which
  every actuator gets anyway (``gateway/metrics.py``): for an HPA or KEDA that scales on them.
- ``recommend``: decisions wait, with an id, until an operator (or a tool) acknowledges them
  through the admin API (``GET /admin/autoscaling``, ``POST /admin/autoscaling/{id}/ack``),
  the decision/acknowledge protocol of Dynamo's VirtualConnector.
- ``kubernetes``: patches a Deployment's or StatefulSet's ``scale`` subresource.
- ``local``: starts and stops server processes on this machine from a command template
  (``local_process.py``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from sage_cp_plugin.elastic.autoscaler import Decision, Role
from sage_cp_plugin.elastic.kubernetes import api_client
from sage_cp_plugin.errors import ConfigurationError

logger = logging.getLogger(__name__)


class Actuator(Protocol):
    name: str

    async def apply(self, model: str, decision: Decision, decision_id: str) -> None:
        """Carry out (or publish) ``decision``; called only when it changes the fleet."""
        ...

    def target(self, model: str) -> dict[Role, int] | None:
        """Replicas per role this actuator has asked for (None: it asks for nothing), so the
        controller counts asked-for-but-cold replicas as ``starting``."""
        ...


class MetricsActuator:
    """Publishes only (the gauges are rendered from the controller's last decision)."""

    name = "metrics"

    async def apply(self, model: str, decision: Decision, decision_id: str) -> None:
        logger.info("autoscaling %s %s: %s", model, decision_id, decision.reason)

    def target(self, model: str) -> dict[Role, int] | None:
        return None


@dataclass
class Recommendation:
    decision_id: str
    model: str
    decision: Decision
    acknowledged: bool = False
    applied: dict[Role, int] | None = None  # what the acknowledger says it did

    def describe(self) -> dict[str, Any]:
        d = self.decision
        return {
            "decision_id": self.decision_id,
            "model": self.model,
            "desired": d.desired,
            "current": d.current,
            "reason": d.reason,
            "forecast_rate": round(d.forecast_rate, 4),
            "at": d.now,
            "acknowledged": self.acknowledged,
            "applied": self.applied,
        }


class RecommendActuator:
    """Keeps the last ``keep`` decisions for the admin API; an acknowledgement says what was
    done, and only acknowledged replicas count as asked for."""

    name = "recommend"

    def __init__(self, keep: int = 100) -> None:
        self.keep = keep
        self.decisions: OrderedDict[str, Recommendation] = OrderedDict()
        self._acked: dict[str, dict[Role, int]] = {}

    async def apply(self, model: str, decision: Decision, decision_id: str) -> None:
        self.decisions[decision_id] = Recommendation(decision_id, model, decision)
        while len(self.decisions) > self.keep:
            self.decisions.popitem(last=False)

    def acknowledge(
        self, decision_id: str, applied: dict[Role, int] | None = None
    ) -> Recommendation:
        rec = self.decisions.get(decision_id)
        if rec is None:
            raise KeyError(
                f"unknown decision id {decision_id!r}; known: {list(self.decisions)[-5:]}"
            )
        rec.acknowledged = True
        rec.applied = dict(applied) if applied is not None else dict(rec.decision.desired)
        self._acked[rec.model] = rec.applied
        return rec

    def target(self, model: str) -> dict[Role, int] | None:
        return self._acked.get(model)


WorkloadKind = Literal["deployments", "statefulsets"]


class KubernetesScaleActuator:
    """``PATCH .../{deployments|statefulsets}/{name}/scale`` with ``spec.replicas``.

    ``workloads`` maps ``"model/role"`` (or ``"model"`` for a general fleet) to the workload's
    name in ``namespace``. Scale-down relies on the pods' graceful termination: the discovery
    source sees them terminating and drains them before they are gone.
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        workloads: dict[str, str],
        namespace: str = "default",
        kind: WorkloadKind = "deployments",
        api_url: str | None = None,
        token: str | None = None,
        in_cluster: bool = False,
        verify: bool | str = True,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not workloads:
            raise ConfigurationError("kubernetes actuator: workloads (model/role -> name) is empty")
        if kind not in ("deployments", "statefulsets"):
            raise ConfigurationError(
                f"kubernetes actuator: kind must be deployments or statefulsets, got {kind!r}"
            )
        self.workloads = workloads
        self.namespace = namespace
        self.kind = kind
        self._client = client or api_client(
            api_url, token=token, in_cluster=in_cluster, verify=verify
        )
        self._asked: dict[str, dict[Role, int]] = {}

    def _workload(self, model: str, role: Role) -> str:
        for key in (f"{model}/{role}", model):
            if key in self.workloads:
                return self.workloads[key]
        raise ConfigurationError(
            f"kubernetes actuator: no workload for {model}/{role}; have {sorted(self.workloads)}"
        )

    def scale_path(self, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/{self.kind}/{name}/scale"

    async def apply(self, model: str, decision: Decision, decision_id: str) -> None:
        for role, n in decision.desired.items():
            if n == decision.current.get(role):
                continue
            resp = await self._client.patch(
                self.scale_path(self._workload(model, role)),
                json={"spec": {"replicas": n}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            resp.raise_for_status()
            self._asked.setdefault(model, {})[role] = n
            logger.info("scaled %s/%s to %d (%s)", model, role, n, decision_id)

    def target(self, model: str) -> dict[Role, int] | None:
        return self._asked.get(model)

    async def aclose(self) -> None:
        await self._client.aclose()


def _local(**options: Any) -> Any:
    from sage_cp_plugin.elastic.local_process import LocalProcessActuator

    return LocalProcessActuator(**options)


BUILTIN_ACTUATORS: dict[str, Any] = {
    "metrics": MetricsActuator,
    "recommend": RecommendActuator,
    "kubernetes": KubernetesScaleActuator,
    "local": _local,
}
