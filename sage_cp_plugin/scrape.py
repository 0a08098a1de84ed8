"""Periodic `/metrics` scraping of vLLM instances.

The parser reads only the samples of the few metrics it needs (a line scan): a full
Prometheus parser (prometheus_client's, used before) spent about 5 % of the gateway's CPU
in a profile against zero-latency instances on vLLM-sized `/metrics` bodies (histograms
of many buckets), every second, for nothing it kept.

Reads vLLM 0.32's names and tolerates the old ones (`vllm:gpu_cache_usage_perc` before it
became `vllm:kv_cache_usage_perc`): a router that reads only one spelling breaks when vLLM
renames, which is a top complaint against other routers. Values are summed over label
sets (several engines behind one server, data parallelism). A scrape that fails or cannot
be parsed leaves the last values marked stale; data older than `stale_after_s` is stale
too, and routers do not trust stale data.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.state import InstanceState, ScrapedLoad

logger = logging.getLogger(__name__)

# Each field and the metric names that carry it, newest first. The parser strips the
# `_total` suffix of counters from family names, so counters are listed without it.
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
}
_WANTED = frozenset(name for names in METRIC_NAMES.values() for name in names)


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition format or carries none of vLLM's load metrics."""


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Field -> value for the load metrics found in a `/metrics` body."""
    sums: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("vllm:"):
            continue  # comments, blank lines and other metrics
        brace = line.find("{")
        space = line.find(" ")
        end = brace if brace != -1 and (space == -1 or brace < space) else space
        if end == -1:
            raise MetricsParseError(f"not Prometheus text: no value in {raw[:80]!r}")
        name = line[:end]
        # Counters appear as `<name>_total` samples of family `<name>`.
        if name.endswith("_total"):
            name = name[:-6]
        if name not in _WANTED:
            continue
        rest = line[end:]
        if brace == end:
            close = rest.rfind("}")
            if close == -1:
                raise MetricsParseError(f"not Prometheus text: unclosed labels in {raw[:80]!r}")
            rest = rest[close + 1 :]
        fields = rest.split()
        try:
            value = float(fields[0])  # an optional timestamp may follow
        except (IndexError, ValueError) as exc:
            raise MetricsParseError(f"not Prometheus text: bad value in {raw[:80]!r}") from exc
        sums[name] = sums.get(name, 0.0) + value
    out: dict[str, float] = {}
    for field, names in METRIC_NAMES.items():
        for name in names:
            if name in sums:
                out[field] = sums[name]
                break
    if not out:
        raise MetricsParseError("no vLLM load metrics (vllm:num_requests_running, ...) in the text")
    return out


class ScrapeConfig(BaseModel):
    """How often each instance's `/metrics` is read, and when the last reading is stale."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)
    stale_after_s: float = Field(5.0, gt=0)


class MetricsScraper:
    def __init__(self, executor: ExecutionCoordinator, config: ScrapeConfig, seed: int = 0) -> None:
        self.executor = executor
        self.config = config
        self._rng = random.Random(seed)
        self.failures: dict[str, str] = {}  # instance id -> last problem

    async def scrape(self, state: InstanceState) -> bool:
        loop = asyncio.get_running_loop()
        try:
            text = await self.executor.fetch_metrics_text(state.instance, self.config.timeout_s)
            values = parse_vllm_metrics(text)
        except Exception as exc:  # any failure: keep old numbers but stop trusting them
            problem = f"{type(exc).__name__}: {exc}"
            if self.failures.get(state.instance_id) != problem:
                logger.warning("scrape of %s failed: %s", state.instance_id, problem)
            self.failures[state.instance_id] = problem
            state.scraped.fresh = False
            return False
        self.failures.pop(state.instance_id, None)
        s: ScrapedLoad = state.scraped
        s.running = values.get("running", s.running)
        s.waiting = values.get("waiting", 0.0)
        kv = values.get("kv_usage", 0.0)
        s.kv_usage = kv / 100.0 if kv > 1.0 else kv  # some versions report percent
        s.prefix_cache_queries = values.get("prefix_cache_queries", s.prefix_cache_queries)
        s.prefix_cache_hits = values.get("prefix_cache_hits", s.prefix_cache_hits)
        s.scraped_at = loop.time()
        s.ours_at_scrape = state.in_flight + state.peer_in_flight  # peer replicas' too
        s.interval_s = self.config.interval_s
        s.fresh = True
        return True

    def expire(self, states: list[InstanceState], now: float) -> None:
        for st in states:
            if st.scraped.fresh and now - st.scraped.scraped_at > self.config.stale_after_s:
                st.scraped.fresh = False

    async def run(self, states: Callable[[], list[InstanceState]]) -> None:
        cfg = self.config
        while True:
            current = states()

            async def one(st: InstanceState) -> None:
                await asyncio.sleep(self._rng.uniform(0, 0.1 * cfg.interval_s))
                await self.scrape(st)

            await asyncio.gather(*(one(st) for st in current), return_exceptions=True)
            self.expire(current, asyncio.get_running_loop().time())
            await asyncio.sleep(cfg.interval_s)
