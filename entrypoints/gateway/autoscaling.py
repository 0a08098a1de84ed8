"""Admin API of the autoscaler (docs/elastic-fleet.md), under the admin key:

- ``GET /admin/autoscaling``: settings, the last decision, and the decisions (with ids) the
  ``recommend`` actuator holds;
- ``POST /admin/autoscaling/{decision_id}/ack``: acknowledge a decision, optionally with
  ``{"applied": {"general": 3}}`` when something else was done; acknowledged replicas are
  then counted as asked for (starting until they serve).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.routing import Route

from sage_cp_plugin.elastic.actuators import RecommendActuator
from sage_cp_plugin.elastic.autoscaler import Role
from sage_cp_plugin.elastic.controller import AutoscaleController

from .admin import _admin
from .body import read_json_object
from .errors import GatewayError
from .runtime import Gateway


class Ack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    applied: dict[Role, int] | None = None


def _controller(gw: Gateway) -> AutoscaleController:
    el = gw.manager.elastic
    if el is None or el.controller is None:
        raise GatewayError(404, "autoscaling is off (enable_auto_scaling=False)",
                           code="autoscaling_off")  # fmt: skip
    return el.controller


async def get_autoscaling(request: Request, gw: Gateway) -> Any:
    c = _controller(gw)
    last = c.last
    act = c.actuator
    return {
        "model": c.model,
        "actuator": act.name,
        "ready": c.ready(c.model),
        "last_decision": None if last is None else {
            "at": last.now, "desired": last.desired, "current": last.current,
            "reason": last.reason, "forecast_rate": last.forecast_rate,
            "ttft_correction": last.ttft_correction, "tpot_correction": last.tpot_correction,
        },
        "actions": c.state.actions,
        "decisions": [r.describe() for r in act.decisions.values()]
        if isinstance(act, RecommendActuator) else [],
    }  # fmt: skip


async def ack_decision(request: Request, gw: Gateway) -> Any:
    act = _controller(gw).actuator
    if not isinstance(act, RecommendActuator):
        raise GatewayError(409, f"the {act.name!r} actuator applies decisions itself; "
                           "acknowledgements are for the 'recommend' actuator",
                           code="not_recommending")  # fmt: skip
    body = Ack.model_validate(await read_json_object(request, gw.settings.max_body_bytes))
    return act.acknowledge(request.path_params["decision_id"], body.applied).describe()


def autoscaling_routes() -> list[Route]:
    return [
        Route("/admin/autoscaling", _admin(get_autoscaling), methods=["GET"]),
        Route("/admin/autoscaling/{decision_id}/ack", _admin(ack_decision), methods=["POST"]),
    ]
