"""Writes request-log records to rotated, size-bounded JSONL files from its own thread.

The event loop only does `queue.put_nowait` of a small tuple; building the record, hashing
the prompt's blocks, serialising and writing happen on the writer thread. When the queue is
full the record is dropped and counted: a slow disk costs log lines, never latency.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sage_cp_plugin.recording.config import RequestLogConfig
from sage_cp_plugin.recording.record import RequestLogRecord

logger = logging.getLogger(__name__)

FILE_PATTERN = re.compile(r"^requests-(\d{6})\.jsonl$")
_STOP = object()
# A unit of work: a function the writer thread calls to get the record (so building it,
# hashing included, happens off the loop).
RecordThunk = Callable[[], RequestLogRecord]


def log_files(folder: str | Path) -> list[Path]:
    """The log files of a log folder, oldest first."""
    return sorted(
        (p for p in Path(folder).iterdir() if FILE_PATTERN.match(p.name)),
        key=lambda p: p.name,
    )


class RequestLogWriter:
    """Bounded queue + one daemon writer thread (see the module docstring)."""

    def __init__(self, config: RequestLogConfig) -> None:
        self.config = config
        self.folder = Path(config.path).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = log_files(self.folder)
        m = FILE_PATTERN.match(existing[-1].name) if existing else None
        self._seq = int(m.group(1)) if m else 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        self.dropped = 0  # records lost because the queue was full
        self.written = 0  # records written
        self.failed = 0  # records whose building or writing raised (logged once each)
        self._file: BinaryIO | None = None
        self._size = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        # Started lazily and again after `close`, so a manager can stop and start again.
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sage-cp-request-log", daemon=True
                )
                self._thread.start()

    # -- event-loop side -------------------------------------------------------------------
    def submit(self, thunk: RecordThunk) -> bool:
        """Queue one record; False (and counted in `dropped`) when the queue is full."""
        if self._thread is None:
            self._ensure_thread()
        try:
            self._queue.put_nowait(thunk)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def flush(self) -> None:
        """Block until every queued record is written (call from a thread, not the loop)."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, then stop the thread (blocking; call via a thread)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            return
        self._queue.put(_STOP)
        thread.join()

    # -- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    if self._file is not None:
                        self._file.close()
                        self._file = None
                    return
                assert callable(item)
                self._write(item().model_dump_json(exclude_none=True) + "\n")
                self.written += 1
            except Exception:
                self.failed += 1
                logger.exception("request log: a record could not be written")
            finally:
                self._queue.task_done()

    def _write(self, line: str) -> None:
        data = line.encode()
        if self._file is None or self._size + len(data) > self.config.max_file_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        self._seq += 1
        path = self.folder / f"requests-{self._seq:06d}.jsonl"
        self._file = path.open("ab")
        self._size = path.stat().st_size
        files = log_files(self.folder)
        for old in files[: max(0, len(files) - self.config.max_files)]:
            old.unlink(missing_ok=True)
