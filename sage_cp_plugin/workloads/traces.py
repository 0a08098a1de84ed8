"""The one place real traces are found and read.

Bundled with the package (``sage_cp_plugin/workloads/data/``, origin and licence in its
README): the Azure LLM inference trace 2023 (conversation and code services; CC-BY 4.0, as
processed by microsoft/vidur, MIT) and the Mooncake FAST'25 synthetic trace
(kvcache-ai/Mooncake, Apache-2.0).

A trace is named by a path, a file name (``azure_conv_2023.csv``) or a short name
(``azure_conv``). Names are looked up first in the folder given by ``$SAGE_CP_TRACES`` (a
user's own traces, or larger copies), then in the bundled data, so every command works from
any working directory.

Formats (`format="auto"` tells them apart by suffix and first line):
- ``azure`` (``.csv``): Azure-style columns, a prompt length ``num_prefill_tokens`` or
  ``ContextTokens``, an output length ``num_decode_tokens`` or ``GeneratedTokens``, and
  optionally an arrival ``arrived_at`` (s) or ``TIMESTAMP`` (seconds, or a date-time string as
  in Azure's 2023/2024 public CSVs). A file without arrival times is lengths only
  (`Trace.timed` is False): the caller gives it arrivals (e.g. Poisson at a rate).
- ``mooncake`` (``.jsonl`` rows with ``input_length``): ``timestamp`` (ms), ``input_length``,
  ``output_length``, ``hash_ids`` (512-token prefix blocks; equal leading ids are a shareable
  KV prefix).
- ``jsonl``: the project's workload format (`sage_cp_plugin.workloads.format`).
A bad row fails with one line naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.recording.importer import (
    import_openai_batch,
    import_request_log,
    is_openai_batch_row,
    is_request_log_row,
)
from sage_cp_plugin.workloads.format import WorkloadRecord, parse_workload

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
    if given.is_file() or given.is_dir():  # a folder is a request log (recording/)
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


TRACE_FORMATS = ("auto", "mooncake", "azure", "jsonl", "log", "openai_batch")
# Azure-style column names: vidur's processed traces, then Azure's own public CSVs.
_PROMPT_COLUMNS = ("num_prefill_tokens", "ContextTokens")
_OUTPUT_COLUMNS = ("num_decode_tokens", "GeneratedTokens")
_TIME_COLUMNS = ("arrived_at", "TIMESTAMP")
_EXPECTED = {
    ".csv": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    ".jsonl": ("timestamp", "input_length", "output_length", "hash_ids"),
}


@dataclass(frozen=True)
class Trace:
    """A window of a trace file: its records (arrivals re-based to 0) and what it carried."""

    path: Path
    format: str
    records: list[WorkloadRecord]
    timed: bool  # False: a lengths-only file, every arrival 0 until the caller sets them
    notes: tuple[str, ...] = ()  # what an import assumed (tokenizer, defaults, rows left out)


def detect_format(path: Path) -> str:
    """``azure`` for ``.csv``; for ``.jsonl``: ``mooncake`` when rows carry ``input_length`` or
    ``timestamp``, else the project's ``jsonl`` workload format."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return "log"  # a request-log folder (recording/)
    if suffix == ".csv":
        return "azure"
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise TraceError(
            f"trace {str(path)!r}: unknown format; use .csv (Azure) or .jsonl (Mooncake or "
            "the workload format), or name the format"
        )
    with path.open(encoding="utf-8") as f:
        first = next((ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")), "")
    try:
        row = json.loads(first) if first else None
    except ValueError:
        raise TraceError(f"{path}:1: not a trace row (invalid JSON)") from None
    mooncake = isinstance(row, dict) and ("input_length" in row or "timestamp" in row)
    if is_request_log_row(row):
        return "log"
    if is_openai_batch_row(row):
        return "openai_batch"
    return "mooncake" if mooncake else "jsonl"


def read_trace(
    name_or_path: str | Path,
    *,
    format: str = "auto",
    start: int = 0,
    limit: int | None = None,
    max_input_tokens: int | None = None,
    tokenizer: str = "estimate",
) -> Trace:
    """Rows ``start..start+limit`` of a trace in any supported format (see the module doc);
    `tokenizer` measures the prompts of an OpenAI batch file (`recording.importer`)."""
    if format not in TRACE_FORMATS:
        raise TraceError(f"unknown trace format {format!r}; use one of {', '.join(TRACE_FORMATS)}")
    path = resolve_trace(name_or_path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "mooncake":
        recs = load_mooncake(path, start=start, limit=limit, max_input_tokens=max_input_tokens)
        return Trace(path, fmt, recs, timed=True)
    if fmt == "azure":
        recs, timed = _read_azure(path, start, limit, max_input_tokens, None)
        return Trace(path, fmt, recs, timed)
    if fmt in ("log", "openai_batch"):
        got = import_request_log(path) if fmt == "log" else import_openai_batch(path, tokenizer)
        notes = list(got.notes) + [
            f"{n} {what} request(s) left out" for what, n in got.skipped.items()
        ]
        recs = _rebased(
            [r for _, r in _window(enumerate(got.records), start, limit)], max_input_tokens
        )
        return Trace(path, fmt, recs, got.timed, tuple(notes))
    return Trace(path, fmt, _read_jsonl(path, start, limit, max_input_tokens), timed=True)


def load_trace(
    name_or_path: str | Path,
    *,
    start: int = 0,
    limit: int | None = None,
    max_input_tokens: int | None = None,
) -> list[WorkloadRecord]:
    """Rows ``start..start+limit`` of a trace (format told by suffix), arrivals re-based to 0."""
    trace = read_trace(name_or_path, start=start, limit=limit, max_input_tokens=max_input_tokens)
    return trace.records


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
    return _read_azure(resolve_trace(name_or_path), start, limit, max_input_tokens, slo_class)[0]


def _read_azure(
    path: Path,
    start: int,
    limit: int | None,
    max_input_tokens: int | None,
    slo_class: str | None,
) -> tuple[list[WorkloadRecord], bool]:
    out: list[WorkloadRecord] = []
    t0: float | None = None
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        prompt_col = _column(path, header, _PROMPT_COLUMNS, "prompt length")
        output_col = _column(path, header, _OUTPUT_COLUMNS, "output length")
        time_col = next((c for c in _TIME_COLUMNS if c in header), None)
        for line_no, row in _window(enumerate(reader, start=2), start, limit):
            n_in = _int_field(path, line_no, row, prompt_col)
            n_out = _int_field(path, line_no, row, output_col)
            if time_col is None:
                out.append(_record(0.0, n_in, n_out, max_input_tokens, slo_class=slo_class))
                continue
            t = _time_field(path, line_no, row, time_col)
            t0 = _check_order(path, line_no, t, t0)
            out.append(_record(t - t0, n_in, n_out, max_input_tokens, slo_class=slo_class))
    return out, time_col is not None


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
            except ValueError as exc:
                raise TraceError(
                    f"{path}:{line_no}: not a trace row (invalid JSON: {exc})"
                ) from None
            if not isinstance(row, dict):
                raise TraceError(f"{path}:{line_no}: not a trace row (not a JSON object)")
            t = _number(path, line_no, row, "timestamp") / 1000.0
            n_in = _int_field(path, line_no, row, "input_length")
            n_out = _int_field(path, line_no, row, "output_length")
            ids = row.get("hash_ids", [])
            if not isinstance(ids, list) or not all(isinstance(h, int) for h in ids):
                raise TraceError(
                    f"{path}:{line_no}: not a trace row (field 'hash_ids': expected a list of "
                    f"integers, got {ids!r:.60})"
                )
            t0 = _check_order(path, line_no, t, t0)
            out.append(_record(t - t0, n_in, n_out, max_input_tokens, prefix_blocks=tuple(ids)))
    return out


def _read_jsonl(
    path: Path, start: int, limit: int | None, max_input_tokens: int | None
) -> list[WorkloadRecord]:
    with path.open(encoding="utf-8") as f:
        records = parse_workload(f, str(path))
    return _rebased([r for _, r in _window(enumerate(records), start, limit)], max_input_tokens)


def _rebased(window: list[WorkloadRecord], max_input_tokens: int | None) -> list[WorkloadRecord]:
    """Arrivals re-based to the window's first; prompt lengths clipped."""
    if not window:
        return []
    t0 = window[0].arrival_s
    out = []
    for r in window:
        update: dict[str, Any] = {"arrival_s": r.arrival_s - t0}
        if max_input_tokens is not None and r.prompt is None:
            update["input_tokens"] = min(r.input_tokens, max_input_tokens)
        out.append(r.model_copy(update=update))
    return out


def _column(path: Path, header: Sequence[str], names: Sequence[str], what: str) -> str:
    for name in names:
        if name in header:
            return name
    raise TraceError(
        f"{path}:1: no {what} column; expected one of {', '.join(names)} "
        f"(columns are {', '.join(header) or 'none'})"
    )


def _missing(path: Path, line_no: int, field: str) -> TraceError:
    return TraceError(
        f"{path}:{line_no}: not a trace row (field {field!r} is missing); expected columns "
        + ", ".join(_EXPECTED.get(path.suffix.lower(), (field,)))
    )


def _number(path: Path, line_no: int, row: dict[str, Any], field: str) -> float:
    value = row.get(field)
    if value is None or value == "":
        raise _missing(path, line_no, field)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TraceError(
            f"{path}:{line_no}: not a trace row (field {field!r}: {value!r:.40} is not a number)"
        ) from None


def _int_field(path: Path, line_no: int, row: dict[str, Any], field: str) -> int:
    value = _number(path, line_no, row, field)
    if value != int(value) or value < 0:
        raise TraceError(
            f"{path}:{line_no}: not a trace row (field {field!r}: {value!r} is not a token "
            "count >= 0)"
        )
    return int(value)


def _time_field(path: Path, line_no: int, row: dict[str, Any], field: str) -> float:
    """Seconds, or a date-time string (Azure's 2023/2024 CSVs) as seconds since the epoch."""
    value = row.get(field)
    try:
        return _number(path, line_no, row, field)
    except TraceError:
        if not isinstance(value, str) or not value.strip():
            raise
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise TraceError(
            f"{path}:{line_no}: not a trace row (field {field!r}: {value!r:.40} is neither "
            "seconds nor a date-time)"
        ) from None


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
