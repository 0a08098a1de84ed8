"""Warnings a client can cause at will, logged once per kind per minute, not once per request.

uvicorn logs a warning for every malformed request ("Invalid HTTP request received.") and an
error for every failure below the application; a hostile client sending thousands of them
would flood the log and spend the gateway's CPU on it. This filter on uvicorn's logger lets
the first record of each kind through per `window_s` and counts the others; the next one let
through says how many were held back. Kinds are message templates (plus the exception type),
a set uvicorn's code bounds.
"""

from __future__ import annotations

import logging

MAX_KINDS = 256  # a safety bound: uvicorn has a dozen templates


class RepeatedLogLimiter(logging.Filter):
    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._kinds: dict[tuple[int, str, str], tuple[float, int]] = {}

    def forget(self) -> None:
        """Start counting afresh (every kind's next record is let through)."""
        self._kinds.clear()

    @staticmethod
    def _kind(record: logging.LogRecord) -> tuple[int, str, str]:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        return record.levelno, str(record.msg), exc

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = self._kind(record)
        first, held = self._kinds.get(kind, (float("-inf"), 0))
        if record.created - first < self.window_s:
            self._kinds[kind] = (first, held + 1)
            return False
        if len(self._kinds) >= MAX_KINDS and kind not in self._kinds:
            self._kinds.clear()
        self._kinds[kind] = (record.created, 0)
        if held:
            record.msg = (
                f"{record.msg} [{held} more like this in the last {self.window_s:g} s "
                "were not logged]"
            )
        return True


def limit_repeated_warnings(logger_name: str = "uvicorn.error") -> RepeatedLogLimiter:
    """Install the filter on the logger once (servers in one process share it)."""
    logger = logging.getLogger(logger_name)
    for f in logger.filters:
        if isinstance(f, RepeatedLogLimiter):
            return f
    limiter = RepeatedLogLimiter()
    logger.addFilter(limiter)
    return limiter
