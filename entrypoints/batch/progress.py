"""`JobProgress`: the tqdm bar (rate and ETA) fed by the source (skips) and the sink (results)."""

from __future__ import annotations

import sys
import threading
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from ._ops import RecordStats, ResultRecord


class JobProgress:
    def __init__(self, total: int, *, enabled: bool = True, desc: str = "batch") -> None:
        self.stats = RecordStats()
        self.skipped = 0
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

    def close(self) -> None:
        self.stats.stop()
        with self._lock:
            self._bar.close()
