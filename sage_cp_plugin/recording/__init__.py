"""The request log: record what a coordinator served, replay it, calibrate from it.

`record.RequestLogRecord` is the line format; `writer.RequestLogWriter` writes it off the
event loop into rotated, size-bounded files; `importer` turns a log (or an OpenAI batch file)
into a workload for `sage-cp replay`.
"""

from sage_cp_plugin.recording.record import (
    SCHEMA_VERSION,
    LoggedDecision,
    LoggedTimings,
    RequestLogRecord,
)

__all__ = ["SCHEMA_VERSION", "LoggedDecision", "LoggedTimings", "RequestLogRecord"]
