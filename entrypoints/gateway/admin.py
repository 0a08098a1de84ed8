"""The admin API under `/admin`: the fleet, the queue, and the policy/router at run time.

Every route needs the admin key. Instances can be listed, added, drained (no new requests;
removed automatically once their in-flight requests end) and removed at once; the policy and
router can be switched by name (any plugin-registered name) with options.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sage_cp_plugin.errors import ConfigurationError, DuplicateInstanceError
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import ExecutionInstance, RequestPriority

from .auth import check_admin_key
from .body import read_json_object
from .errors import GatewayError, error_response, validation_error
from .runtime import Gateway
from .shared import announce

Handler = Callable[[Request, Gateway], Awaitable[Any]]
_QUEUE_LISTING = 100  # items shown by GET /admin/queue; the depth is always exact


class PluginChoice(BaseModel):
    """Body of PUT /admin/policy and PUT /admin/router."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(data, default=str), status_code=status, media_type="application/json"
    )


def _admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        gw: Gateway = request.app.state.gateway
        try:
            check_admin_key(request.headers, gw.settings.admin_key)
            out = await handler(request, gw)
            return out if isinstance(out, Response) else _json(out)
        except GatewayError as err:
            return error_response(err.status, err.message, param=err.param, code=err.code,
                                  headers=err.headers)  # fmt: skip
        except ValidationError as exc:
            bad = validation_error(exc)
            return error_response(400, bad.message, param=bad.param, code=bad.code)
        except DuplicateInstanceError as exc:
            return error_response(409, str(exc), code="duplicate_instance")
        except ConfigurationError as exc:
            return error_response(400, str(exc), code="invalid_configuration")
        except TypeError as exc:  # options the plugin's factory does not take
            return error_response(400, f"invalid options: {exc}", code="invalid_options")
        except KeyError as exc:
            return error_response(404, str(exc.args[0] if exc.args else exc), code="not_found")

    return endpoint


def describe_instance(s: InstanceState, gw: Gateway) -> dict[str, Any]:
    inst = s.instance
    sc = s.scraped
    return {
        "instance_id": s.instance_id,
        "url": inst.base_url,
        "type": inst.instance_type.value,
        "models": inst.served_models,
        "healthy": s.healthy,
        "circuit_open": s.circuit_open,
        "draining": s.draining,
        "removing_when_idle": s.instance_id in gw.draining(),
        "in_flight": s.in_flight,
        "capacity": s.capacity,
        "completed": s.completed,
        "failed": s.failed,
        "scraped": {
            "running": sc.running,
            "waiting": sc.waiting,
            "kv_cache_usage": sc.kv_usage,
            "fresh": sc.fresh,
        },
    }


def _instance(gw: Gateway, instance_id: str) -> InstanceState:
    state = gw.manager.fleet.get(instance_id)
    if state is None:
        raise KeyError(
            f"unknown instance {instance_id!r}; registered: {sorted(gw.manager.fleet.states)}"
        )
    return state


async def list_instances(request: Request, gw: Gateway) -> Any:
    return {"instances": [describe_instance(s, gw) for s in gw.manager.fleet]}


async def get_instance(request: Request, gw: Gateway) -> Any:
    return describe_instance(_instance(gw, request.path_params["instance_id"]), gw)


async def add_instance(request: Request, gw: Gateway) -> Any:
    body = await read_json_object(request, gw.settings.max_body_bytes)
    inst = ExecutionInstance.model_validate(body)
    gw.manager.register_instance(inst)
    await announce(gw, instance=(inst.instance_id, inst.model_dump(mode="json")))
    return _json(describe_instance(_instance(gw, inst.instance_id), gw), status=201)


async def drain_instance(request: Request, gw: Gateway) -> Any:
    iid = request.path_params["instance_id"]
    state = _instance(gw, iid)
    remove = request.query_params.get("remove", "true").lower() not in ("0", "false", "no")
    if remove:
        gw.drain_and_remove(iid)
    else:
        gw.manager.drain_instance(iid)
    await announce(gw, drain=(iid, remove))
    return _json(describe_instance(state, gw), status=202)


async def remove_instance(request: Request, gw: Gateway) -> Any:
    iid = request.path_params["instance_id"]
    _instance(gw, iid)
    await gw.manager.unregister_instance(iid)
    await announce(gw, instance=(iid, None))
    return {"instance_id": iid, "removed": True}


async def get_queue(request: Request, gw: Gateway) -> Any:
    m = gw.manager
    now = m.now()
    items: list[dict[str, Any]] = []
    for item in m.queue.items():
        if len(items) >= _QUEUE_LISTING:
            break
        items.append(
            {
                "request_id": item.request_id,
                "model": item.request.model_name,
                "kind": item.request.request_kind.value,
                "priority": RequestPriority(item.request.priority).name.lower(),
                "age_ms": round((now - item.arrival) * 1000, 3),
                "attempts": item.attempts,
            }
        )
    return {
        "depth": len(m.queue),
        "capacity": m.queue.capacity,
        "running": m.dispatcher.in_flight_count(),
        "items": items,
        "running_on": m.dispatcher.describe(),
    }


async def get_status(request: Request, gw: Gateway) -> Any:
    m = gw.manager
    status = m.get_status()
    status["instances"] = [describe_instance(s, gw) for s in m.fleet]
    status["metrics"] = m.get_metrics().model_dump(mode="json")
    status["shutting_down"] = gw.shutting_down
    return status


def _plugin_state(gw: Gateway) -> dict[str, Any]:
    m = gw.manager
    return {
        "scheduling_policy": m.policy_name,
        "policy": m.scheduling_policy.describe(),
        "routing_strategy": m.routing_strategy,
    }


async def get_policy(request: Request, gw: Gateway) -> Any:
    return _plugin_state(gw)


async def set_policy(request: Request, gw: Gateway) -> Any:
    choice = PluginChoice.model_validate(
        await read_json_object(request, gw.settings.max_body_bytes)
    )
    gw.manager.update_policy(choice.name, **choice.options)
    await announce(gw, policy=(choice.name, choice.options))
    return _plugin_state(gw)


async def set_router(request: Request, gw: Gateway) -> Any:
    choice = PluginChoice.model_validate(
        await read_json_object(request, gw.settings.max_body_bytes)
    )
    gw.manager.update_router(choice.name, **choice.options)
    await announce(gw, router=(choice.name, choice.options))
    return _plugin_state(gw)


def admin_routes() -> list[Route]:
    return [
        Route("/admin/status", _admin(get_status), methods=["GET"]),
        Route("/admin/instances", _admin(list_instances), methods=["GET"]),
        Route("/admin/instances", _admin(add_instance), methods=["POST"]),
        Route("/admin/instances/{instance_id}", _admin(get_instance), methods=["GET"]),
        Route("/admin/instances/{instance_id}", _admin(remove_instance), methods=["DELETE"]),
        Route("/admin/instances/{instance_id}/drain", _admin(drain_instance), methods=["POST"]),
        Route("/admin/queue", _admin(get_queue), methods=["GET"]),
        Route("/admin/policy", _admin(get_policy), methods=["GET"]),
        Route("/admin/policy", _admin(set_policy), methods=["PUT"]),
        Route("/admin/router", _admin(get_policy), methods=["GET"]),
        Route("/admin/router", _admin(set_router), methods=["PUT"]),
    ]
