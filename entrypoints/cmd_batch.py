"""`sage-cp batch`: run an OpenAI batch file (chat, completions, embeddings) through the fleet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "batch",
        help="run an OpenAI batch file (JSONL) through the control plane",
        description=(
            "Send every line of INPUT (OpenAI batch format: custom_id, method, url, body; "
            "/v1/chat/completions, /v1/completions and /v1/embeddings may be mixed) through a "
            "SAGE pipeline and append one result line per input line to OUTPUT. Re-running "
            "skips custom_ids already answered in OUTPUT and retries the failed ones (unless "
            "--no-retry-failed). While the fleet is down, requests wait for it (--fleet-wait). "
            "Exits 1 when any line finally failed. Without --config or --url it starts the "
            "embedded simulated fleet."
        ),
    )
    p.add_argument("input", type=Path, help="input JSONL file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output JSONL (appended)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="fleet configuration (YAML/TOML)")
    where.add_argument(
        "--url",
        help="a shared coordinator (sage-cp serve), e.g. http://127.0.0.1:8080, or several "
        "replicas comma-separated (spread over, failover when one dies)",
    )
    p.add_argument("--shard", default=None, help="run only lines i, i+n, ... (i/n, from 0/n)")
    p.add_argument("--concurrency", "-c", type=int, default=64, help="requests in flight")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-ttft",
        action="store_true",
        help="do not stream answers from the instances (less CPU; no TTFT/TTFT SLOs)",
    )
    p.add_argument(
        "--retry-failed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rerun the requests of failed lines already in OUTPUT (default: on)",
    )
    p.add_argument(
        "--fleet-wait",
        type=float,
        default=300.0,
        help="seconds one request may wait, with backoff, for a down fleet (0: fail at "
        "once; default 300)",
    )
    p.add_argument(
        "--request-log",
        type=Path,
        default=None,
        metavar="DIR",
        help="record every finished request into rotated JSONL files in DIR (with --config)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sage_cp_plugin.errors import ConfigurationError

    from .batch import BatchJobOptions, run_batch_job
    from .batch._ops import format_summary

    try:
        opts = BatchJobOptions(
            input=args.input,
            output=args.output,
            config=args.config,
            url=args.url,
            shard=args.shard,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            measure_ttft=not args.no_ttft,
            retry_failed=args.retry_failed,
            fleet_wait_s=args.fleet_wait,
            request_log=args.request_log,
            tracing_from_env=True,
        )
    except (ValidationError, ValueError) as exc:
        print(f"error: {_first_error(exc)}", file=sys.stderr)
        return 2
    try:
        result = run_batch_job(opts)
    except (ConfigurationError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        # One line: YAML parser errors span several, with a caret diagram.
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print(f"{result.input} -> {result.output} via {result.coordinator}")
        if result.already_done:
            print(f"resumed: {result.already_done} line(s) were already in the output")
        if result.retried_failed:
            print(f"retried: {result.retried_failed} line(s) that had failed")
        print(format_summary(result.summary))
    failed = int(result.summary.get("failed", 0))
    if failed:
        print(
            f"error: {failed} line(s) failed; run the same command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _first_error(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}".removeprefix("Value error, ")
            for e in exc.errors()
        )
    return str(exc)
