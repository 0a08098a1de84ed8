"""Settings of the request log (`ControlPlaneOptions.request_log`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.recording.record import RecordSource


class RequestLogConfig(BaseModel):
    """Where and how finished requests are logged (off unless this is set).

    - `path`: a directory; files ``requests-000001.jsonl``, ``-000002``, ... are written in
      it, a new one when the current passes `max_file_bytes`; beyond `max_files` the oldest
      is deleted, so the log never holds more than about `max_files * max_file_bytes`.
    - `queue_size`: records waiting for the writer thread; when full a record is dropped and
      counted (`RequestLogWriter.dropped`), the event loop never waits for the disk.
    - `text`: also write the prompt's text (off: only salted block hashes are written).
    - `salt`: mixed into every block hash; give the same salt to logs whose prefixes must be
      comparable with each other (None: a random salt per process, so hashes are only
      comparable within one run and say nothing about the text to anyone without it).
    - `source`: who submitted the requests (the gateway and batch jobs set theirs).
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    max_file_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_files: int = Field(16, gt=0)
    queue_size: int = Field(65_536, gt=0)
    text: bool = False
    salt: str | None = None
    source: RecordSource = "api"


def request_log_for(
    current: RequestLogConfig | None, path: str | None, source: RecordSource
) -> RequestLogConfig | None:
    """The log an entry point runs with: a `--request-log DIR` flag wins over the
    configuration file's `request_log.path`; the source is the entry point's unless the file
    names one."""
    if path is None and current is None:
        return None
    base = current or RequestLogConfig(path=str(path))
    update: dict[str, object] = {}
    if path is not None:
        update["path"] = str(path)
    if "source" not in base.model_fields_set:
        update["source"] = source
    return base.model_copy(update=update)
