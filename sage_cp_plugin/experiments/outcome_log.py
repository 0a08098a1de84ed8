"""The per-request outcome log of an experiment: one JSON line per finished request, with its
arm, written by a background thread so the event loop never waits on the disk.

Bounded: at most `max_bytes` per file; a full file is renamed to `<log>.1` (the previous
`.1` is dropped) and a new one started. Bounded in memory too: when the writer falls behind by
`max_pending` lines, new lines are dropped and counted (`dropped`), never queued without end.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

from sage_cp_plugin.experiments.arms import ARM_TAG
from sage_cp_plugin.types import RequestResult

logger = logging.getLogger(__name__)
_STOP = object()


def outcome_record(result: RequestResult, experiment: str, at: float) -> dict[str, Any]:
    """The log line of one finished request (times in ms, cost in the instances' unit)."""
    t = result.timings
    d = result.decision
    return {
        "at": at,
        "experiment": experiment,
        "arm": result.tags.get(ARM_TAG),
        "request_id": result.request_id,
        "model": result.model_name,
        "state": result.state.value,
        "error_type": result.error_type,
        "instance_id": result.instance_id,
        "router": d.router if d is not None else None,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "queue_ms": t.queue_ms,
        "ttft_ms": t.ttft_ms,
        "tpot_ms": t.tpot_ms,
        "e2e_ms": t.e2e_ms,
        "slo_met": result.slo_met,
        "estimated_cost": d.estimated_cost if d is not None else None,
        "cost": result.cost,
    }


class OutcomeLog:
    def __init__(self, path: str | Path, *, max_bytes: int, max_pending: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="sage-cp-ab-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued and stop the writer (blocking: call it off the event loop)."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        f = self.path.open("a", encoding="utf-8")
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                line = json.dumps(item, separators=(",", ":")) + "\n"
                if f.tell() + len(line) > self.max_bytes and f.tell() > 0:
                    f.close()
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    f = self.path.open("a", encoding="utf-8")
                f.write(line)
                if self._queue.empty():
                    f.flush()
        except OSError as exc:  # a full disk must not take the gateway down
            logger.error("experiment log %s: %s; logging stopped", self.path, exc)
        finally:
            f.close()
