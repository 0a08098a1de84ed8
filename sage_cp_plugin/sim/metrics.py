"""Prometheus metrics of one simulated instance, with vLLM 0.32's names and labels.

Each instance owns a private ``CollectorRegistry`` (never the process-global one), so many
instances can live in one process -- the benchmark setup -- without name clashes. Gauges are set
when ``/metrics`` is scraped rather than on every engine step: scrapes are rare, steps are not.
For the same reason the engine's counters and histograms (updated per token: an inter-token
latency per sequence per step) are plain Python tallies (`Tally`, `Distribution`), copied into
their Prometheus children when rendered: the same values, bit for bit (the same float additions
in the same order), without a lock and Prometheus' checks per token.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket bounds as vLLM declares them (seconds).
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_XFER_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

_LABELS = ("model_name", "engine")


class Tally:
    """A Prometheus counter child's value, kept as a plain number until `flush`."""

    __slots__ = ("_child", "value")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def flush(self) -> None:
        # Integer increments summed as an int equal Prometheus' float sum (exact below 2**53).
        self._child._value.set(float(self.value))


class Distribution:
    """A Prometheus histogram child's buckets and sum, kept in plain Python until `flush`.

    `observe` does what `Histogram.observe` does -- the sum grows by the same float additions
    in the same order, the value lands in the first bucket whose bound is >= it -- so the
    rendered histogram is identical; `tests/test_sim_metrics.py` compares the two.
    """

    __slots__ = ("_bounds", "_child", "counts", "sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self._bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect_left(self._bounds, amount)] += 1

    def observe_many(self, amount: float, times: int) -> None:
        """`observe(amount)` `times` times (the sum by repeated addition, as they would)."""
        total = self.sum
        for _ in range(times):
            total += amount
        self.sum = total
        self.counts[bisect_left(self._bounds, amount)] += times

    def flush(self) -> None:
        self._child._sum.set(self.sum)
        for value, n in zip(self._child._buckets, self.counts, strict=True):
            value.set(float(n))


class SimMetrics:
    """The counters, gauges and histograms the engine updates, ready to render."""

    def __init__(self, model_name: str, engine: str = "0", *, decode_role: bool = False):
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        lv = {"model_name": model_name, "engine": engine}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABELS, registry=reg).labels(**lv)

        self._tallies: list[Tally | Distribution] = []

        def counter(name: str, doc: str) -> Tally:
            return tally(Counter(name, doc, _LABELS, registry=reg).labels(**lv))

        def tally(child: Counter) -> Tally:
            t = Tally(child)
            self._tallies.append(t)
            return t

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Distribution:
            d = Distribution(
                Histogram(name, doc, _LABELS, buckets=buckets, registry=reg).labels(**lv)
            )
            self._tallies.append(d)
            return d

        self.num_running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.num_waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 means 100 %.")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix-cache queries, in tokens."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative preemptions.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generation tokens produced.")
        self.prompt_cached = counter(
            "vllm:prompt_tokens_cached", "Prompt tokens not computed (local or external cache)."
        )
        by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Prompt tokens by source.",
            (*_LABELS, "source"),
            registry=reg,
        )
        self.prompt_local_compute = tally(by_source.labels(**lv, source="local_compute"))
        self.prompt_local_cache_hit = tally(by_source.labels(**lv, source="local_cache_hit"))
        self.prompt_external = tally(by_source.labels(**lv, source="external_kv_transfer"))
        self.external_queries = counter(
            "vllm:external_prefix_cache_queries", "KV-connector queries, in tokens."
        )
        self.external_hits = counter(
            "vllm:external_prefix_cache_hits", "KV-connector hits, in tokens."
        )
        success = Counter(
            "vllm:request_success",
            "Finished requests.",
            (*_LABELS, "finished_reason"),
            registry=reg,
        )
        self.success_length = tally(success.labels(**lv, finished_reason="length"))
        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Inter-token latency.", _ITL_BUCKETS)
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", _REQUEST_BUCKETS
        )
        self.queue_time = hist(
            "vllm:request_queue_time_seconds", "Time spent waiting.", _REQUEST_BUCKETS
        )
        # Only a KV consumer (decode role) exposes the NIXL transfer histogram, as in vLLM.
        self.nixl_xfer: Distribution | None = (
            hist("vllm:nixl_xfer_time_seconds", "KV transfer time.", _XFER_BUCKETS)
            if decode_role
            else None
        )

    def render(self, running: int, waiting: int, kv_usage: float) -> bytes:
        self.num_running.set(running)
        self.num_waiting.set(waiting)
        self.kv_usage.set(kv_usage)
        for t in self._tallies:
            t.flush()
        return generate_latest(self.registry)
