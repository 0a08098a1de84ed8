"""OpenAI batch files: `JsonlSource` streams request lines, `JsonlSink` appends result lines.

The source never loads the file: it reads one line per call, reports a malformed line as a
`SourceLine` with its error (the job goes on), skips `custom_id`s already answered (resume)
and lines of other shards, and ends with `EndOfStream`. The writer appends one line per
result and flushes it at once, so a crash or Ctrl-C loses no finished result.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

from sage.foundation import BatchFunction, SinkFunction

from .inputs import SourceLine
from .markers import EndOfStream, is_marker
from .records import ResultRecord

Shard = tuple[int, int]


def parse_shard(text: str) -> Shard:
    """`"i/n"` -> (i, n) with 0 <= i < n."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"shard {text!r} must look like i/n, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return i, n


def in_shard(line_no: int, shard: Shard | None) -> bool:
    return shard is None or (line_no - 1) % shard[1] == shard[0]


def count_lines(path: str | Path, shard: Shard | None = None) -> int:
    """Non-blank lines of `path` in `shard`, read in chunks (for the progress bar's total)."""
    n = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip() and in_shard(line_no, shard):
                n += 1
    return n


def completed_ids(path: str | Path) -> set[str]:
    """`custom_id`s already in a result file; cuts off a torn last line (a killed writer)."""
    p = Path(path)
    if not p.exists():
        return set()
    done: set[str] = set()
    good_end = 0
    with open(p, "rb+") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn write: its request runs again
            good_end += len(raw)
            try:
                cid = json.loads(raw).get("custom_id")
            except (ValueError, AttributeError):
                continue
            if cid is not None:
                done.add(str(cid))
        if f.seek(0, os.SEEK_END) != good_end:
            f.truncate(good_end)
    return done


_INPUT_LINE_ID = re.compile(r"line-\d+")


def drop_failed_results(path: str | Path) -> int:
    """Remove failed result lines so a rerun retries their requests; returns how many.

    Lines that failed as input (invalid JSON, duplicate custom_id: `line-N` ids) stay:
    they would fail the same way again. The file is rewritten atomically (temp + rename),
    so an interruption leaves either the old or the new file, never a torn one.
    """
    p = Path(path)
    if not p.exists():
        return 0
    kept: list[bytes] = []
    dropped = 0
    with open(p, "rb") as f:
        for raw in f:
            try:
                data = json.loads(raw)
            except ValueError:
                kept.append(raw)  # a torn last line: completed_ids cuts it
                continue
            cid = str(data.get("custom_id")) if isinstance(data, dict) else ""
            failed = isinstance(data, dict) and data.get("error") is not None
            if failed and not _INPUT_LINE_ID.fullmatch(cid):
                dropped += 1
            else:
                kept.append(raw)
    if dropped:
        tmp = p.with_name(p.name + ".retry-tmp")
        with open(tmp, "wb") as out:
            out.writelines(kept)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, p)
    return dropped


class JsonlSource(BatchFunction):  # type: ignore[misc]
    """Lines of a JSONL file as `SourceLine`s, then `EndOfStream(count)`, then None (done).

    `skip_ids`: custom_ids to skip (and `line-N` ids of bad lines already reported).
    `on_skip(n)`: called for each skipped line (a progress bar advances on it).
    """

    def __init__(
        self,
        path: str | Path,
        skip_ids: Collection[str] | None = None,
        shard: Shard | None = None,
        on_skip: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.skip_ids = skip_ids or frozenset()
        self.shard = shard
        self.on_skip = on_skip
        self._file: IO[bytes] | None = None
        self._line_no = 0
        self._emitted = 0
        self._first_line: dict[str, int] = {}
        self._state = "new"

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self._state == "done":
            return None
        if self._state == "new":
            self._file = open(self.path, "rb")
            self._state = "reading"
        item = self._next_line()
        if item is not None:
            self._emitted += 1
            return item
        self.close()
        self._state = "done"
        return EndOfStream(self._emitted)

    def _next_line(self) -> SourceLine | None:
        assert self._file is not None
        for raw in self._file:
            self._line_no += 1
            n = self._line_no
            if not raw.strip() or not in_shard(n, self.shard):
                continue
            if f"line-{n}" in self.skip_ids:
                self._skipped()
                continue
            try:
                data = json.loads(raw)
            except ValueError as exc:
                return SourceLine(n, error=f"line {n} is not valid JSON: {exc}")
            cid = data.get("custom_id") if isinstance(data, dict) else None
            if cid is not None:
                cid = str(cid)
                if cid in self.skip_ids:
                    self._skipped()
                    continue
                first = self._first_line.setdefault(cid, n)
                if first != n:
                    return SourceLine(
                        n, error=f"duplicate custom_id {cid!r} (first on line {first})"
                    )
            return SourceLine(n, data=data)
        return None

    def _skipped(self) -> None:
        if self.on_skip is not None:
            self.on_skip(1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ResultWriter:
    """Appends result lines to a file, one flushed write per record; thread-safe."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self.written = 0

    def write(self, record: ResultRecord) -> None:
        line = json.dumps(record.to_batch_line(), separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonlSink(SinkFunction):  # type: ignore[misc]
    """Writes each `ResultRecord` as an OpenAI batch output line.

    Give `path` (the sink owns its writer) or `writer` (shared, owned by the caller).
    `on_record(record)` is called after each write (progress, statistics).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        writer: ResultWriter | None = None,
        on_record: Callable[[ResultRecord], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (path is None) == (writer is None):
            raise ValueError("JsonlSink needs exactly one of path= or writer=")
        self._owns_writer = writer is None
        self.writer = writer or ResultWriter(path)  # type: ignore[arg-type]
        self.on_record = on_record

    def execute(self, data: Any) -> None:
        if is_marker(data):
            return
        records = data if isinstance(data, list) else [data]
        for record in records:
            if not isinstance(record, ResultRecord):
                raise TypeError(f"JsonlSink expects ResultRecords, got {type(record).__name__}")
            self.writer.write(record)
            if self.on_record is not None:
                self.on_record(record)

    def close(self) -> None:
        if self._owns_writer:
            self.writer.close()
