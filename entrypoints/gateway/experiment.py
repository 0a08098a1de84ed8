"""The gateway's side of an A/B experiment (`routing_strategy: experiment`): every request
gets its arm tag before it is submitted; every finished request is counted per arm
(Prometheus), logged with its arm (the outcome log `sage-cp ab report` reads, and a log
line), and arms can be inspected, changed and stopped under `/admin/experiment`.

The experiment lives in the router (`experiments/router.py`), so a run-time
`PUT /admin/router` that swaps it out ends the experiment; this module looks it up each time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.routing import Route

from sage_cp_plugin.experiments.arms import ARM_TAG
from sage_cp_plugin.experiments.outcome_log import OutcomeLog, outcome_record
from sage_cp_plugin.experiments.router import ExperimentRouter
from sage_cp_plugin.types import RequestMetadata, RequestResult

from .body import read_json_object
from .errors import GatewayError

if TYPE_CHECKING:
    from .runtime import Gateway

logger = logging.getLogger(__name__)
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ArmUpdate(BaseModel):
    """Body of PUT /admin/experiment/arms/{arm}: the fields to change."""

    model_config = ConfigDict(extra="forbid")
    share: float | None = Field(None, ge=0)
    router: str | None = Field(None, min_length=1)
    router_options: dict[str, Any] | None = None
    # split_fleet only: the policy that orders the arm's lane (replaced, not removed, here).
    policy: str | None = Field(None, min_length=1)
    policy_options: dict[str, Any] | None = None


class GatewayExperiment:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._log: OutcomeLog | None = None
        self._log_path: str | None = None
        r = gw.metrics.registry
        self.requests = Counter(
            "sage_cp_ab_requests",
            "Finished requests of an A/B experiment by arm and outcome",
            ["arm", "outcome"],
            registry=r,
        )
        self.ttft = Histogram(
            "sage_cp_ab_time_to_first_token_seconds",
            "TTFT per arm",
            ["arm"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "sage_cp_ab_e2e_request_latency_seconds",
            "E2E latency per arm",
            ["arm"],
            buckets=_BUCKETS,
            registry=r,
        )

    @property
    def router(self) -> ExperimentRouter | None:
        router = self.gw.manager.router
        return router if isinstance(router, ExperimentRouter) else None

    def tag(self, request: RequestMetadata) -> RequestMetadata:
        router = self.router
        return request if router is None else router.tagged(request)

    def observe(self, result: RequestResult) -> None:
        arm = result.tags.get(ARM_TAG)
        router = self.router
        if arm is None or router is None:
            return
        arm = str(arm)
        self.requests.labels(arm, result.state.value).inc()
        t = result.timings
        if t.ttft_ms is not None:
            self.ttft.labels(arm).observe(t.ttft_ms / 1000)
        if t.e2e_ms is not None:
            self.e2e.labels(arm).observe(t.e2e_ms / 1000)
        logger.info(
            "experiment %s arm %s: request %s %s on %s", router.config.experiment, arm,
            result.request_id, result.state.value, result.instance_id,
        )  # fmt: skip
        log = self._outcome_log(router)
        if log is not None:
            log.write(outcome_record(result, router.config.experiment, time.time()))

    def _outcome_log(self, router: ExperimentRouter) -> OutcomeLog | None:
        path = router.config.log
        if path != self._log_path:
            if self._log is not None:
                self._log.close(timeout=0)  # rare (a new experiment): the thread drains alone
            self._log = (
                None if path is None else OutcomeLog(path, max_bytes=router.config.log_max_bytes)
            )
            self._log_path = path
        return self._log

    async def aclose(self) -> None:
        if self._log is not None:
            await asyncio.to_thread(self._log.close)
            self._log = None


def _router(gw: Gateway) -> ExperimentRouter:
    router = gw.experiment.router
    if router is None:
        raise GatewayError(
            404,
            "no experiment is running (routing_strategy is "
            f"{gw.manager.routing_strategy!r}, not 'experiment')",
            code="no_experiment",
        )
    return router


async def get_experiment(request: Request, gw: Gateway) -> Any:
    router = _router(gw)
    return {**router.describe(), "cost_by_arm": _arm_costs(gw)}


def _arm_costs(gw: Gateway) -> dict[str, float]:
    prefix = f"{ARM_TAG}="
    return {
        k[len(prefix) :]: v
        for k, v in gw.manager.metrics.cost_by_tag.items()
        if k.startswith(prefix)
    }


async def update_arm(request: Request, gw: Gateway) -> Any:
    router = _router(gw)
    body = ArmUpdate.model_validate(await read_json_object(request, gw.settings.max_body_bytes))
    fields = {k: v for k, v in body.model_dump().items() if v is not None}
    router.update_arm(request.path_params["arm"], **fields)
    return router.describe()


async def stop_arm(request: Request, gw: Gateway) -> Any:
    router = _router(gw)
    router.stop_arm(request.path_params["arm"])
    return router.describe()


def experiment_routes() -> list[Route]:
    from .admin import _admin

    return [
        Route("/admin/experiment", _admin(get_experiment), methods=["GET"]),
        Route("/admin/experiment/arms/{arm}", _admin(update_arm), methods=["PUT"]),
        Route("/admin/experiment/arms/{arm}/stop", _admin(stop_arm), methods=["POST"]),
    ]
