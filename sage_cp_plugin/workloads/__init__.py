"""Workloads for replay: real traces, synthetic generators and a user-writable JSONL format.

    from sage_cp_plugin.workloads import load_azure, load_mooncake, load_workload, PromptBuilder

Real traces (Azure 2023, Mooncake) are bundled with the package and found by `resolve_trace`
(``$SAGE_CP_TRACES`` first, then the bundled data; see `traces`).

A workload is a list of `WorkloadRecord` (arrival time, lengths, optional shared prefix blocks,
tenant, priority and SLOs); `PromptBuilder` turns a record into prompt text of exactly its
token length, with real shared prefixes for shared blocks.
"""

from __future__ import annotations

from sage_cp_plugin.workloads.format import (
    BLOCK_TOKENS,
    WorkloadRecord,
    load_workload,
    parse_workload,
    save_workload,
)
from sage_cp_plugin.workloads.prompts import PromptBuilder
from sage_cp_plugin.workloads.synthetic import (
    BATCH,
    DEFAULT_CLASSES,
    INTERACTIVE,
    STANDARD,
    SLOClass,
    assign_classes,
    assign_tenants,
    evenly_spaced_windows,
    gamma_arrivals,
    load_ladder,
    mean_rate,
    poisson_arrivals,
    synthetic,
    tenant_prefixes,
    time_scaled,
    with_arrivals,
)
from sage_cp_plugin.workloads.traces import (
    AZURE_CODE,
    AZURE_CONV,
    MOONCAKE,
    TRACE_FORMATS,
    TRACE_NAMES,
    TRACES_ENV,
    Trace,
    TraceError,
    detect_format,
    load_azure,
    load_mooncake,
    load_trace,
    read_trace,
    resolve_trace,
    trace_dirs,
)

__all__ = [
    "AZURE_CODE",
    "AZURE_CONV",
    "BATCH",
    "BLOCK_TOKENS",
    "DEFAULT_CLASSES",
    "INTERACTIVE",
    "MOONCAKE",
    "STANDARD",
    "TRACES_ENV",
    "TRACE_FORMATS",
    "TRACE_NAMES",
    "PromptBuilder",
    "SLOClass",
    "Trace",
    "TraceError",
    "WorkloadRecord",
    "assign_classes",
    "assign_tenants",
    "detect_format",
    "evenly_spaced_windows",
    "gamma_arrivals",
    "load_azure",
    "load_ladder",
    "load_mooncake",
    "load_trace",
    "load_workload",
    "mean_rate",
    "parse_workload",
    "poisson_arrivals",
    "read_trace",
    "resolve_trace",
    "save_workload",
    "synthetic",
    "tenant_prefixes",
    "time_scaled",
    "trace_dirs",
    "with_arrivals",
]
