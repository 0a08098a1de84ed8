"""`JobProgress`: the tqdm bar (rate and ETA) fed by the source (skips) and the sink (results)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from ._ops import RecordStats, ResultRecord


class JobProgress:
    def __init__(self, total: int, *, enabled: bool = True, desc: str = "batch") -> None:
        self.stats = RecordStats()
        self.skipped = 0
        self.enabled = enabled
        self._last_note = float("-inf")
        self._lock = threading.Lock()
        self._bar: Any = tqdm(
            total=total,
            desc=desc,
            unit="req",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.5,
            smoothing=0.1,
        )

    def on_skip(self, n: int) -> None:
        with self._lock:
            self.skipped += n
            self._bar.update(n)

    def on_record(self, record: ResultRecord) -> None:
        self.stats.add(record)
        with self._lock:
            self._bar.update(1)
            if not record.ok:
                self._bar.set_postfix(failed=self.stats.failed, refresh=False)

    def on_wait(self, reason: str, down_s: float, retry_in_s: float) -> None:
        """A request is waiting for the fleet: say so (bar postfix, or a line on stderr
        at most every 10 s without a bar)."""
        short = " ".join(reason.split())[:80]
        note = f"fleet down {down_s:.0f}s, retry in {retry_in_s:.1f}s: {short}"
        with self._lock:
            if self.enabled:
                self._bar.set_postfix_str(note, refresh=True)
                return
            now = time.monotonic()
            if now - self._last_note >= 10.0:
                self._last_note = now
                print(f"batch: waiting: {note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.stats.stop()
        with self._lock:
            self._bar.close()
