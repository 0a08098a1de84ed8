"""Prometheus series of the autoscaler, rendered at scrape time (gateway ``/metrics``).

``sage_cp_autoscaling_desired_replicas`` and ``..._current_replicas`` per model and role are
what an HPA or KEDA ScaledObject can scale on (llm-d publishes desired replicas the same
way). ``sage_cp_autoscaling_demand_rps`` is the forecast request rate plus backlog: it is
measured at the coordinator, not at the instances, so it stays meaningful when the fleet is
at zero replicas (production-stack's router-side demand metric for scale-to-zero).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sage_cp_plugin.elastic.controller import AutoscaleController

PREFIX = "sage_cp_autoscaling"


def autoscaling_metrics(controller: AutoscaleController | None) -> Iterator[Metric]:
    if controller is None:
        return
    labels = ["model", "role"]
    desired = GaugeMetricFamily(f"{PREFIX}_desired_replicas",
                                "Replicas the autoscaler wants per model and role", labels=labels)  # fmt: skip
    current = GaugeMetricFamily(f"{PREFIX}_current_replicas",
                                "Ready (serving, not draining) replicas per model and role",
                                labels=labels)  # fmt: skip
    model = controller.model or "all"
    ready = controller.ready(controller.model)
    last = controller.last
    for role in controller.roles():
        current.add_metric([model, role], ready.get(role, 0))
        desired.add_metric([model, role], last.desired[role] if last else ready.get(role, 0))
    yield desired
    yield current
    yield GaugeMetricFamily(
        f"{PREFIX}_demand_rps",
        "Forecast request rate plus backlog the autoscaler sizes for (survives zero replicas)",
        value=last.forecast_rate if last else 0.0,
    )
    yield CounterMetricFamily(
        f"{PREFIX}_actions",
        "Scaling decisions that changed the fleet",
        value=controller.state.actions,
    )
