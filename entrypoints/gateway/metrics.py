"""Prometheus metrics of the gateway, in its own `CollectorRegistry`.

Per-request series (counters, histograms) are updated once per finished request. Fleet and
queue state (health, circuit, in-flight, scraped load, queue depth, retries, failovers, SLO
attainment) are read from the coordinator when `/metrics` is scraped, by a custom collector:
no per-request cost, and the values cannot drift from the coordinator's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sage_cp_plugin.elastic.prom import autoscaling_metrics
from sage_cp_plugin.types import RequestPriority, RequestResult

from .connections import ConnectionsCollector

if TYPE_CHECKING:
    from sage_cp_plugin.manager import ControlPlaneManager

PREFIX = "sage_cp"
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
_PRIORITY_LABELS = {p: p.name.lower() for p in RequestPriority}


def _counter_by(name: str, doc: str, label: str, values: Mapping[str, float]) -> Metric:
    """One counter family with a sample per key of `values`, in key order."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class FleetCollector(Collector):
    """Coordinator state rendered at scrape time."""

    def __init__(self, manager: ControlPlaneManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        m = self.manager
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting in the pending queue", value=len(m.queue)
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_capacity", "Bound of the pending queue", value=m.queue.capacity
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_requests_running",
            "Requests dispatched to an instance and not finished",
            value=m.dispatcher.in_flight_count(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_retries", "Attempts retried after an upstream failure", m.metrics.retries
        )
        yield CounterMetricFamily(
            f"{PREFIX}_failovers", "Retries sent to a different instance", m.metrics.failovers
        )
        limiter = m.admission.rate_limiter
        if limiter is not None:
            refused = CounterMetricFamily(
                f"{PREFIX}_rate_limited",
                "Requests refused by a rate limit (scope: tenant or total; limit: requests, "
                "tokens, or too_large for a request that can never fit)",
                labels=["scope", "limit"],
            )
            for (scope, limit), n in sorted(limiter.refused.items()):
                refused.add_metric([scope, limit], n)
            yield refused
        yield CounterMetricFamily(
            f"{PREFIX}_cost",
            "What finished requests cost at the instances' prices (RequestResult.cost)",
            m.metrics.total_cost,
        )
        yield _counter_by(
            f"{PREFIX}_cost_by_model",
            "sage_cp_cost of the requests of each model",
            "model",
            m.metrics.cost_by_model,
        )
        yield _counter_by(
            f"{PREFIX}_cost_by_tag",
            "sage_cp_cost per request tag key=value (an A/B arm, a tenant; bounded as "
            "requests_by_tag)",
            "tag",
            m.metrics.cost_by_tag,
        )
        by_tag = CounterMetricFamily(
            f"{PREFIX}_requests_by_tag",
            "Finished requests per request tag key=value (bounded: max_tag_series, then 'other')",
            labels=["tag", "outcome"],
        )
        for tag, counts in m.metrics.tag_counts().items():
            by_tag.add_metric([tag, "completed"], counts["completed"])
            by_tag.add_metric([tag, "failed"], counts["failed"])
        yield by_tag
        yield from self._slo()
        yield from self._instances()
        yield from autoscaling_metrics(m.elastic.controller if m.elastic else None)

    def _slo(self) -> Iterator[Metric]:
        mc = self.manager.metrics
        total = GaugeMetricFamily(
            f"{PREFIX}_slo_attainment_ratio",
            "Share of finished requests carrying an SLO that met every SLO they carried",
            labels=["priority"],
        )
        total.add_metric(["all"], (1.0 - mc.slo_violations / mc.slo_total) if mc.slo_total else 1.0)
        for name, (met, n) in sorted(mc.slo_by_priority.items()):
            total.add_metric([name.lower()], met / n if n else 1.0)
        yield total
        yield CounterMetricFamily(
            f"{PREFIX}_slo_violations",
            "Requests that missed an SLO they carried",
            mc.slo_violations,
        )

    def _instances(self) -> Iterator[Metric]:
        labels = ["instance", "model", "type"]

        def fam(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_instance_{name}", doc, labels=labels)

        healthy = fam("healthy", "1 when the instance passes its health checks")
        circuit = fam("circuit_open", "1 while the instance's circuit breaker is open")
        draining = fam("draining", "1 while the instance is drained (no new requests)")
        in_flight = fam("in_flight", "Requests the control plane has running on the instance")
        capacity = fam(
            "capacity", "Slots of the instance (max_concurrent_requests, prefill/decode limits)"
        )
        running = fam("scraped_running", "vllm:num_requests_running at the last scrape")
        waiting = fam("scraped_waiting", "vllm:num_requests_waiting at the last scrape")
        kv = fam("scraped_kv_cache_usage", "vllm:kv_cache_usage_perc (0..1) at the last scrape")
        fresh = fam("scrape_fresh", "1 when the last /metrics scrape is recent enough to trust")
        # One series per instance and mode: 1 for the mode the prefix routers use for it.
        cache_mode = GaugeMetricFamily(
            f"{PREFIX}_instance_kv_cache_mode",
            "1 for how the control plane knows the instance's prefix cache: 'events' (vLLM "
            "KV-cache events) or 'approximate' (what was sent where; blind to evictions)",
            labels=[*labels, "mode"],
        )
        blocks = fam("kv_event_blocks", "Blocks the KV-event index holds for the instance")
        tracker = self.manager.kv_events
        for s in self.manager.fleet:
            inst = s.instance
            lv = [s.instance_id, ",".join(inst.served_models), inst.instance_type.value]
            healthy.add_metric(lv, float(s.healthy))
            circuit.add_metric(lv, float(s.circuit_open))
            draining.add_metric(lv, float(s.draining))
            in_flight.add_metric(lv, s.in_flight)
            capacity.add_metric(lv, s.capacity)
            running.add_metric(lv, s.scraped.running)
            waiting.add_metric(lv, s.scraped.waiting)
            kv.add_metric(lv, s.scraped.kv_usage)
            fresh.add_metric(lv, float(s.scraped.fresh))
            mode = tracker.mode(s.instance_id)
            for m in ("events", "approximate"):
                cache_mode.add_metric([*lv, m], float(m == mode))
            blocks.add_metric(lv, tracker.index.blocks_of(s.instance_id))
        yield from (healthy, circuit, draining, in_flight, capacity, running, waiting, kv, fresh)
        yield from (cache_mode, blocks)


class GatewayMetrics:
    def __init__(self, manager: ControlPlaneManager) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.manager = manager
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered by the gateway, by endpoint, model, HTTP status and priority",
            ["endpoint", "model", "status", "priority"],
            registry=r,
        )
        lm = ["model"]
        self.queue_time = Histogram(
            f"{PREFIX}_queue_time_seconds",
            "Time from arrival to dispatch",
            lm,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from arrival to the first token (includes queueing)",
            lm,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "Mean time between output tokens of a request (one observation per request)",
            lm,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            f"{PREFIX}_e2e_request_latency_seconds",
            "Time from arrival to the last token",
            lm,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        r.register(FleetCollector(manager))
        r.register(ConnectionsCollector())
        self._known_models: frozenset[str] = frozenset()
        # The labelled children, looked up once per label set: `labels()` takes a lock and
        # checks its arguments on every call (a visible share of a request in the profile),
        # and returns the same child every time for the same labels (none is ever removed).
        self._children: dict[tuple[Any, ...], Any] = {}
        # Also told of every finished request (e.g. the A/B experiment's per-arm series).
        self.result_hooks: list[Callable[[RequestResult], None]] = []

    def model_label(self, model: object) -> str:
        # Unknown model names come from clients: never let them create label series.
        if not isinstance(model, str):
            return "none"
        if model not in self._known_models:
            self._known_models = frozenset(self.manager.list_models())
            if model not in self._known_models:
                return "unknown"
        return model

    def observe_request(
        self, endpoint: str, model: object, status: int, priority: RequestPriority | None
    ) -> None:
        prio = _PRIORITY_LABELS[priority] if priority is not None else "none"
        key = (self.requests, endpoint, self.model_label(model), status, prio)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(key[1], key[2], str(status), prio)
        child.inc()

    def _child(self, metric: Histogram, model: str) -> Any:
        child = self._children.get((metric, model))
        if child is None:
            child = self._children[(metric, model)] = metric.labels(model)
        return child

    def observe_result(self, result: RequestResult) -> None:
        for hook in self.result_hooks:
            hook(result)
        t = result.timings
        model = self.model_label(result.model_name)
        if t.queue_ms is not None:
            self._child(self.queue_time, model).observe(t.queue_ms / 1000)
        if t.ttft_ms is not None:
            self._child(self.ttft, model).observe(t.ttft_ms / 1000)
        if t.tpot_ms is not None:
            self._child(self.itl, model).observe(t.tpot_ms / 1000)
        if t.e2e_ms is not None:
            self._child(self.e2e, model).observe(t.e2e_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
