"""Loaders for the real traces in `../shared/traces/` (see its README for origin and licence).

- Azure LLM inference trace 2023 (conversation and code services; CC-BY 4.0, as processed by
  microsoft/vidur): arrival times and prompt/output lengths, no text.
- Mooncake FAST'25 synthetic trace (kvcache-ai/Mooncake, Apache-2.0): arrival (ms), lengths and
  `hash_ids`, 512-token prefix blocks; equal leading ids are a shareable KV prefix.

The directory defaults to `../shared/traces` relative to the working directory (the project
root) and can be moved with the `SAGE_CP_TRACES` environment variable.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.workloads.format import WorkloadRecord

AZURE_CONV = "azure_conv_2023.csv"
AZURE_CODE = "azure_code_2023.csv"
MOONCAKE = "mooncake_synthetic.jsonl"


def trace_dir() -> Path:
    return Path(os.environ.get("SAGE_CP_TRACES", "../shared/traces"))


def trace_path(name: str) -> Path:
    p = trace_dir() / name
    if not p.exists():
        raise ConfigurationError(
            f"trace {name!r} not found in {str(trace_dir())!r}; run from the project root or "
            "set SAGE_CP_TRACES to the directory holding the shared traces"
        )
    return p


def _resolve(name_or_path: str | Path) -> Path:
    """An existing path as given, else a trace of that name in the shared traces folder."""
    path = Path(name_or_path)
    return path if path.exists() else trace_path(str(name_or_path))


def load_azure(
    name_or_path: str | Path = AZURE_CONV,
    *,
    limit: int | None = None,
    start: int = 0,
    max_input_tokens: int | None = None,
    slo_class: str | None = None,
) -> list[WorkloadRecord]:
    """Azure conv/code rows `start..start+limit` as records; arrivals re-based to 0.

    `max_input_tokens` clips prompt lengths (to fit a simulated model's context).
    """
    path = _resolve(name_or_path)
    out: list[WorkloadRecord] = []
    t0: float | None = None
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i < start:
                continue
            if limit is not None and len(out) >= limit:
                break
            t = float(row["arrived_at"])
            t0 = t if t0 is None else t0
            n_in = max(1, int(row["num_prefill_tokens"]))
            if max_input_tokens is not None:
                n_in = min(n_in, max_input_tokens)
            out.append(
                WorkloadRecord(
                    arrival_s=t - t0,
                    input_tokens=n_in,
                    output_tokens=max(1, int(row["num_decode_tokens"])),
                    slo_class=slo_class,
                )
            )
    return out


def load_mooncake(
    name_or_path: str | Path = MOONCAKE,
    *,
    limit: int | None = None,
    start: int = 0,
    max_input_tokens: int | None = None,
) -> list[WorkloadRecord]:
    """Mooncake rows as records whose `prefix_blocks` are the trace's `hash_ids`."""
    path = _resolve(name_or_path)
    out: list[WorkloadRecord] = []
    t0: float | None = None
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < start or not line.strip():
                continue
            if limit is not None and len(out) >= limit:
                break
            row = json.loads(line)
            t = float(row["timestamp"]) / 1000.0
            t0 = t if t0 is None else t0
            n_in = max(1, int(row["input_length"]))
            if max_input_tokens is not None:
                n_in = min(n_in, max_input_tokens)
            out.append(
                WorkloadRecord(
                    arrival_s=t - t0,
                    input_tokens=n_in,
                    output_tokens=max(1, int(row["output_length"])),
                    prefix_blocks=tuple(int(h) for h in row["hash_ids"]),
                )
            )
    return out
