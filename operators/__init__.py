"""SAGE operators and the shared coordinator service (installed as sage_cp_plugin.operators).

from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import ChatMap, JsonlSink, use_control_plane

env = LocalEnvironment("chat")
use_control_plane(env, "fleet.yaml")          # or a dict / ControlPlaneConfig / url=...
env.from_batch(["Hello", "Bonjour"]).map(ChatMap).sink(JsonlSink, path="out.jsonl")
env.submit(autostop=True)
"""

from __future__ import annotations

from .backends import LocalBackend, started_manager
from .batcher import BatchFlatMap, RequestBatch, RequestBatcher
from .inputs import PreparedRequest, SourceLine, prepare
from .jsonl import (
    JsonlSink,
    JsonlSource,
    ResultWriter,
    completed_ids,
    count_lines,
    drop_failed_results,
    parse_shard,
)
from .maps import BatchMap, ChatMap, CompletionMap, ControlPlaneMap, EmbeddingMap
from .markers import EndOfStream, Heartbeat, with_end_marker
from .metrics_sink import MetricsSink
from .outage import OutageBackoff
from .records import ErrorInfo, ResultRecord, Timings
from .registration import DEFAULT_SERVICE_NAME, ControlPlaneHandle, use_control_plane
from .remote import RemoteBackend
from .service import ControlPlaneService, ServiceClosedError, close_services
from .stats import RecordStats, format_summary
from .window import ConcurrentFlatMap

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "BatchFlatMap",
    "BatchMap",
    "ChatMap",
    "CompletionMap",
    "ConcurrentFlatMap",
    "ControlPlaneHandle",
    "ControlPlaneMap",
    "ControlPlaneService",
    "EmbeddingMap",
    "EndOfStream",
    "ErrorInfo",
    "Heartbeat",
    "JsonlSink",
    "JsonlSource",
    "LocalBackend",
    "MetricsSink",
    "OutageBackoff",
    "PreparedRequest",
    "RecordStats",
    "RemoteBackend",
    "RequestBatch",
    "RequestBatcher",
    "ResultRecord",
    "ResultWriter",
    "ServiceClosedError",
    "SourceLine",
    "Timings",
    "close_services",
    "completed_ids",
    "count_lines",
    "drop_failed_results",
    "format_summary",
    "parse_shard",
    "prepare",
    "started_manager",
    "use_control_plane",
    "with_end_marker",
]
