"""The one place real traces are found and read.

Bundled with the package (``sage_cp_plugin/workloads/data/``, origin and licence in its
README): the Azure LLM inference trace 2023 (conversation and code services; CC-BY 4.0, as
processed by microsoft/vidur, MIT) and the Mooncake FAST'25 synthetic trace
(kvcache-ai/Mooncake, Apache-2.0).

A trace is named by a path, a file name (``azure_conv_2023.csv``) or a short name
(``azure_conv``). Names are looked up first in the folder given by ``$SAGE_CP_TRACES`` (a
user's own traces, or larger copies), then in the bundled data, so every command works from
any working directory.

Formats, told apart by suffix:
- ``.csv``: Azure columns ``arrived_at`` (s), ``num_prefill_tokens``, ``num_decode_tokens``.
- ``.jsonl``: Mooncake rows ``timestamp`` (ms), ``input_length``, ``output_length``,
  ``hash_ids`` (512-token prefix blocks; equal leading ids are a shareable KV prefix).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import TypeVar

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.workloads.format import WorkloadRecord

AZURE_CONV = "azure_conv_2023.csv"
AZURE_CODE = "azure_code_2023.csv"
MOONCAKE = "mooncake_synthetic.jsonl"
# Short names accepted wherever a trace is named (CLI `--workload`, benchmarks).
TRACE_NAMES: dict[str, str] = {
    "azure_conv": AZURE_CONV,
    "azure_code": AZURE_CODE,
    "mooncake": MOONCAKE,
}
TRACES_ENV = "SAGE_CP_TRACES"
BUNDLED_DIR = Path(__file__).resolve().parent / "data"
_Row = TypeVar("_Row")


class TraceError(ConfigurationError):
    """A trace that cannot be found or read; the message is one line naming the file."""


def trace_dirs() -> list[Path]:
    """Folders searched for a trace name, in order: ``$SAGE_CP_TRACES``, then the bundled data."""
    env = os.environ.get(TRACES_ENV)
    if not env:
        return [BUNDLED_DIR]
    user = Path(env).expanduser()
    if not user.is_dir():
        raise TraceError(f"{TRACES_ENV}={env!r} is not a directory; unset it or point it at one")
    return [user, BUNDLED_DIR]


def resolve_trace(name_or_path: str | Path) -> Path:
    """The file a trace name or path refers to, or a `TraceError` saying where it looked."""
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    text = str(name_or_path)
    if len(given.parts) > 1 or given.is_absolute():
        raise TraceError(f"trace file {text!r} does not exist")
    file_name = TRACE_NAMES.get(text, text)
    dirs = trace_dirs()
    for folder in dirs:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    where = " or ".join(repr(str(d)) for d in dirs)
    raise TraceError(
        f"trace {text!r} does not exist in {where}; give a path, one of "
        f"{', '.join(sorted(TRACE_NAMES))}, or set {TRACES_ENV} to the folder holding it"
    )


def load_trace(
    name_or_path: str | Path,
    *,
    start: int = 0,
    limit: int | None = None,
    max_input_tokens: int | None = None,
) -> list[WorkloadRecord]:
    """Rows ``start..start+limit`` of an Azure CSV or Mooncake JSONL trace, arrivals re-based to 0."""
    path = resolve_trace(name_or_path)
    if path.suffix == ".jsonl":
        return load_mooncake(path, start=start, limit=limit, max_input_tokens=max_input_tokens)
    if path.suffix == ".csv":
        return load_azure(path, start=start, limit=limit, max_input_tokens=max_input_tokens)
    raise TraceError(f"trace {str(path)!r}: unknown format; use .csv (Azure) or .jsonl (Mooncake)")


def load_azure(
    name_or_path: str | Path = AZURE_CONV,
    *,
    start: int = 0,
    limit: int | None = None,
    max_input_tokens: int | None = None,
    slo_class: str | None = None,
) -> list[WorkloadRecord]:
    """Azure conv/code rows ``start..start+limit`` as records; arrivals re-based to 0.

    ``max_input_tokens`` clips prompt lengths (to fit a simulated model's context).
    """
    path = resolve_trace(name_or_path)
    out: list[WorkloadRecord] = []
    t0: float | None = None
    with path.open(newline="", encoding="utf-8") as f:
        for line_no, row in _window(enumerate(csv.DictReader(f), start=2), start, limit):
            try:
                t = float(row["arrived_at"])
                n_in = int(row["num_prefill_tokens"])
                n_out = int(row["num_decode_tokens"])
            except (KeyError, TypeError, ValueError) as exc:
                raise _bad_row(
                    path, line_no, exc, "arrived_at, num_prefill_tokens, num_decode_tokens"
                ) from None
            t0 = _check_order(path, line_no, t, t0)
            out.append(_record(t - t0, n_in, n_out, max_input_tokens, slo_class=slo_class))
    return out


def load_mooncake(
    name_or_path: str | Path = MOONCAKE,
    *,
    start: int = 0,
    limit: int | None = None,
    max_input_tokens: int | None = None,
) -> list[WorkloadRecord]:
    """Mooncake rows as records whose ``prefix_blocks`` are the trace's ``hash_ids``."""
    path = resolve_trace(name_or_path)
    out: list[WorkloadRecord] = []
    t0: float | None = None
    with path.open(encoding="utf-8") as f:
        rows = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
        for line_no, line in _window(rows, start, limit):
            try:
                row = json.loads(line)
                t = float(row["timestamp"]) / 1000.0
                n_in, n_out = int(row["input_length"]), int(row["output_length"])
                blocks = tuple(int(h) for h in row.get("hash_ids", ()))
            except (KeyError, TypeError, ValueError) as exc:
                raise _bad_row(
                    path, line_no, exc, "timestamp, input_length, output_length"
                ) from None
            t0 = _check_order(path, line_no, t, t0)
            out.append(_record(t - t0, n_in, n_out, max_input_tokens, prefix_blocks=blocks))
    return out


def _window(
    rows: Iterator[tuple[int, _Row]], start: int, limit: int | None
) -> Iterator[tuple[int, _Row]]:
    if start < 0 or (limit is not None and limit < 0):
        raise TraceError(f"start={start} and limit={limit} must be >= 0")
    return islice(rows, start, None if limit is None else start + limit)


def _record(
    arrival_s: float,
    n_in: int,
    n_out: int,
    max_input_tokens: int | None,
    *,
    slo_class: str | None = None,
    prefix_blocks: tuple[int, ...] = (),
) -> WorkloadRecord:
    # A zero length in a trace means "at least one token" to a server: clamp rather than drop,
    # so windows keep their row count and arrival pattern.
    n_in = max(1, n_in)
    if max_input_tokens is not None:
        n_in = min(n_in, max_input_tokens)
    return WorkloadRecord(
        arrival_s=arrival_s,
        input_tokens=n_in,
        output_tokens=max(1, n_out),
        slo_class=slo_class,
        prefix_blocks=prefix_blocks,
    )


def _check_order(path: Path, line_no: int, t: float, t0: float | None) -> float:
    """The window's first arrival; a row before it would get a negative arrival time."""
    if t0 is None:
        return t
    if t < t0:
        raise TraceError(f"{path}:{line_no}: arrival {t} precedes the window's first ({t0})")
    return t0


def _bad_row(path: Path, line_no: int, exc: Exception, columns: str) -> TraceError:
    return TraceError(f"{path}:{line_no}: not a trace row ({exc!r}); expected columns {columns}")
