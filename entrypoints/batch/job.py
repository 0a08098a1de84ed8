"""`run_batch_job`: an OpenAI batch file through a SAGE pipeline of our operators.

    JsonlSource (streamed, resumable, sharded) -> ConcurrentFlatMap (N requests in flight
    through the shared ControlPlaneService) -> JsonlSink (append + flush per result)

Resuming reads the output's `custom_id`s first and skips them; results are appended as they
finish, so an interrupted job loses only requests that were still in flight. With
`retry_failed` (the default) failed result lines are removed first, so their requests run
again: a rerun retries exactly the lines that failed. While the fleet is down, requests wait
with backoff (at most `fleet_wait_s` each; operators/outage.py) instead of failing, and the
progress bar says why it is waiting. The service is closed in a `finally` because SAGE
skips its stop hooks when an operator raises.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sage_cp_plugin import tracing
from sage_cp_plugin.config import ControlPlaneConfig
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.recording.config import request_log_for
from sage_cp_plugin.tracing import batch as tracing_batch

from ._ops import (
    ConcurrentFlatMap,
    JsonlSink,
    JsonlSource,
    ManagerFactory,
    OutageBackoff,
    ResultWriter,
    completed_ids,
    count_lines,
    drop_failed_results,
    parse_shard,
    use_control_plane,
)
from .progress import JobProgress


class BatchJobOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    input: Path
    output: Path
    config: ControlPlaneConfig | dict[str, Any] | Path | None = None
    url: str | None = None
    shard: tuple[int, int] | None = None
    concurrency: int = Field(64, ge=1)
    progress: bool = True
    # Stream answers from the instances to measure TTFT (costs CPU per token).
    measure_ttft: bool = True
    # Rerun the requests of failed result lines (they are removed from the output first).
    retry_failed: bool = True
    # How long one request may wait for a down fleet to come back (0: fail at once).
    fleet_wait_s: float = Field(300.0, ge=0)
    manager_factory: ManagerFactory | None = None
    # Tests: a backoff with a virtual clock (its max_wait_s wins over fleet_wait_s).
    outage_backoff: OutageBackoff | None = None
    # Record every finished request (the coordinator's request log) into this folder.
    request_log: Path | None = None
    # `sage-cp batch`: with no `tracing:` section in --config (or no config), the OTEL_*
    # variables alone turn tracing on, as for `sage-cp serve`. A library caller leaves it off
    # and configures tracing itself (a tracer already set up is never replaced).
    tracing_from_env: bool = False

    @field_validator("shard", mode="before")
    @classmethod
    def _shard(cls, v: Any) -> Any:
        return parse_shard(v) if isinstance(v, str) else v


class BatchJobResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    lines_in_shard: int
    already_done: int
    retried_failed: int = 0
    written: int
    summary: dict[str, Any]
    coordinator: str


def run_batch_job(opts: BatchJobOptions) -> BatchJobResult:
    """Run the job to the end; raises ConfigurationError/OSError before any request runs."""

    if not opts.input.is_file():
        raise FileNotFoundError(f"input file {str(opts.input)!r} does not exist")
    config = None if opts.url is not None else ControlPlaneConfig.load(opts.config)
    if config is not None:
        path = str(opts.request_log) if opts.request_log is not None else None
        log = request_log_for(config.request_log, path, "batch")
        config = config.model_copy(update={"request_log": log})  # never the caller's object
    elif opts.request_log is not None:
        raise ConfigurationError(
            "--request-log needs a local coordinator (--config); with --url the remote "
            "gateway records (sage-cp serve --request-log)"
        )
    retried = drop_failed_results(opts.output) if opts.retry_failed else 0
    done = completed_ids(opts.output)
    total = count_lines(opts.input, opts.shard)
    progress = JobProgress(total, enabled=opts.progress)
    writer = ResultWriter(opts.output)
    outage = opts.outage_backoff or OutageBackoff(max_wait_s=opts.fleet_wait_s)
    outage.on_wait = progress.on_wait

    section = config.tracing if config is not None else None
    if section is not None:
        tracing.configure(section)  # the job's span; the service's manager reuses it
    elif opts.tracing_from_env and not tracing.enabled() and tracing.validate(None):
        tracing.configure(None)  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and the other variables
    with tracing_batch.span(
        "sage_cp.batch_job", {"sage_cp.batch.input": str(opts.input), "sage_cp.batch.lines": total}
    ) as trace_parent:
        _run_pipeline(opts, config, done, progress, writer, outage, trace_parent)
    return BatchJobResult(
        input=str(opts.input),
        output=str(opts.output),
        lines_in_shard=total,
        already_done=progress.skipped,
        retried_failed=retried,
        written=writer.written,
        summary={
            **progress.stats.summary(),
            "outage_retries": outage.retries,
            "longest_outage_s": outage.waited_s,
        },
        coordinator=opts.url or "in-process (embedded simulated fleet)"
        if config is None or config.uses_embedded_fleet
        else "in-process (configured fleet)",
    )


def _run_pipeline(
    opts: BatchJobOptions,
    config: ControlPlaneConfig | None,
    done: set[str],
    progress: JobProgress,
    writer: ResultWriter,
    outage: OutageBackoff,
    trace_parent: dict[str, str] | None,
) -> None:
    from sage.runtime import LocalEnvironment

    env = LocalEnvironment(f"sage-cp-batch-{int(time.time())}")
    # SAGE logs every stage at INFO on the console, through its "sage" logger.
    env.logger.update_output_level("console", "WARNING")
    handle = use_control_plane(
        env,
        config,
        url=opts.url,
        manager_factory=opts.manager_factory,
        manager_options=None if opts.measure_ttft else {"upstream_streaming": False},
        name="control_plane",
        outage=outage if outage.max_wait_s > 0 else None,
        trace_parent=trace_parent,
    )
    (
        env.from_batch(
            JsonlSource,
            path=str(opts.input),
            skip_ids=done,
            shard=opts.shard,
            on_skip=progress.on_skip,
        )
        .flatmap(ConcurrentFlatMap, service_name=handle.name, max_in_flight=opts.concurrency)
        .sink(JsonlSink, writer=writer, on_record=progress.on_record)
    )
    try:
        env.submit(autostop=True)
    finally:
        handle.close()
        writer.close()
        progress.close()
