"""Tracebacks logged once per kind of failure, not once per request.

A client can repeat a request that trips a bug as often as it likes; a traceback per
request would flood the log (and cost CPU) while saying nothing new. The kind is the
exception type plus where it was raised; later occurrences of a kind are only counted.
"""

from __future__ import annotations

import logging
import traceback


class OncePerKind:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.counts: dict[str, int] = {}

    @staticmethod
    def kind(exc: BaseException) -> str:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        return f"{type(exc).__name__} at {where}"

    def exception(self, exc: BaseException, message: str, *args: object) -> bool:
        """Log `message` with the traceback the first time this kind is seen (True), else
        count it and log one line at debug level (False)."""
        kind = self.kind(exc)
        seen = self.counts.get(kind, 0)
        self.counts[kind] = seen + 1
        if seen == 0:
            self._logger.error(message, *args, exc_info=exc)
            return True
        self._logger.debug(
            message + " (%s, seen %d times; traceback logged once)", *args, kind, seen + 1
        )
        return False
