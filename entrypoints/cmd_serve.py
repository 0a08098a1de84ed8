"""`sage-cp serve`: the OpenAI-compatible gateway (see docs/gateway.md)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sage_cp_plugin.tracing import cli as tracing_cli

API_KEY_ENV = "SAGE_CP_API_KEY"
ADMIN_KEY_ENV = "SAGE_CP_ADMIN_KEY"


def register(sub: Any) -> None:
    from .gateway.schemas import DEFAULT_MAX_EMBEDDING_CHARS, DEFAULT_MAX_EMBEDDING_INPUTS
    from .gateway.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INFLIGHT_BYTES

    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway in front of a fleet",
        description=(
            "Serve /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/models, "
            "/health, /metrics and /admin over one control plane. Without --config it "
            "starts the embedded simulated fleet (models sim-model and sim-embed)."
        ),
    )
    p.add_argument("--config", default=None, help="fleet configuration (YAML or TOML)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require this key on /v1 (Authorization: Bearer ...); default ${API_KEY_ENV}",
    )
    p.add_argument(
        "--admin-key",
        default=None,
        help=f"key for /admin (disabled without one); default ${ADMIN_KEY_ENV}",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"larger request bodies get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    p.add_argument(
        "--max-embedding-inputs",
        type=int,
        default=DEFAULT_MAX_EMBEDDING_INPUTS,
        help=f"most inputs in one embeddings request (default {DEFAULT_MAX_EMBEDDING_INPUTS})",
    )
    p.add_argument(
        "--max-embedding-chars",
        type=int,
        default=DEFAULT_MAX_EMBEDDING_CHARS,
        help=f"most characters in one embeddings request (default {DEFAULT_MAX_EMBEDDING_CHARS})",
    )
    p.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=DEFAULT_MAX_INFLIGHT_BYTES,
        help="bytes all requests in flight may hold (bodies, embedding answers); a request "
        f"that would pass it waits with 429 + Retry-After (default {DEFAULT_MAX_INFLIGHT_BYTES})",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's headers (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a client has to send a request's body after its headers (default 60)",
    )
    p.add_argument(
        "--keep-alive",
        type=float,
        default=30.0,
        help="seconds an idle keep-alive connection stays open (default 30)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        help="open connections beyond this get 503 and are closed (default 4096)",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="keep start-up objects in the garbage collector's scans (by default they are "
        "frozen once serving, so a full collection does not stall the loop for all of them; "
        "for A/B measurements)",
    )
    p.add_argument(
        "--max-pending",
        type=int,
        default=None,
        help="bound of the pending queue (overrides the config's max_pending_requests)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish on SIGTERM/SIGINT",
    )
    p.add_argument(
        "--no-upstream-streaming",
        action="store_true",
        help="fetch non-streaming answers in one upstream call (faster; TTFT/TPOT then not "
        "measured for them)",
    )
    p.add_argument(
        "--request-log",
        default=None,
        metavar="DIR",
        help="record every finished request into rotated JSONL files in DIR (no prompt text; "
        "see docs/policy-lab.md)",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="share fleet state (load, admin changes, prefixes) with other replicas through "
        "Redis, e.g. redis://10.0.0.5:6379/0 (docs/scale-out.md)",
    )
    p.add_argument("--redis-namespace", default="sagecp", help="key prefix in Redis")
    p.add_argument("--replica-id", default=None, help="this replica's name (default: host-pid)")
    p.add_argument(
        "--advertise-url",
        default=None,
        help="with --redis-url: where the other replicas reach this one to hand it requests "
        "whose x-request-id it runs (default: http://<--host>:<bound port>; a wildcard "
        "--host advertises the host name)",
    )
    p.add_argument(
        "--request-claim-ttl",
        type=float,
        default=600.0,
        help="with --redis-url: seconds a request id stays claimed by the replica running "
        "it (a resend to another replica is handed to it meanwhile)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving HTTP: N forwarding workers plus one scheduling process that "
        "is the one control plane (docs/scale-out.md); default 1, a single process",
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    tracing_cli.add_arguments(p)
    p.set_defaults(func=run)


def _key(flag: str | None, env: str) -> str | None:
    return flag if flag is not None else os.environ.get(env)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sage_cp_plugin import tracing
    from sage_cp_plugin.config import ControlPlaneConfig
    from sage_cp_plugin.errors import ConfigurationError
    from sage_cp_plugin.recording.config import request_log_for

    from .gateway import GatewaySettings
    from .gateway import run as run_gateway

    try:
        settings = GatewaySettings(
            host=args.host,
            port=args.port,
            # A given-but-empty key (flag or variable) is refused by the settings, never
            # taken as "no key": that would switch authentication off by accident.
            api_key=_key(args.api_key, API_KEY_ENV),
            admin_key=_key(args.admin_key, ADMIN_KEY_ENV),
            max_body_bytes=args.max_body_bytes,
            max_embedding_inputs=args.max_embedding_inputs,
            max_embedding_chars=args.max_embedding_chars,
            max_inflight_bytes=args.max_inflight_bytes,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_s=args.keep_alive,
            max_connections=args.max_connections,
            gc_freeze=not args.no_gc_freeze,
            max_pending_requests=args.max_pending,
            shutdown_timeout_s=args.shutdown_timeout,
            log_level=args.log_level,
            upstream_streaming=not args.no_upstream_streaming,
            redis_url=args.redis_url,
            redis_namespace=args.redis_namespace,
            replica_id=args.replica_id,
            advertise_url=args.advertise_url,
            request_claim_ttl_s=args.request_claim_ttl,
        )
        config = ControlPlaneConfig.load(args.config)
        config.request_log = request_log_for(config.request_log, args.request_log, "gateway")
        config.tracing = tracing_cli.config_from(args, config.tracing)
        if args.workers > 1:  # checked here; each child process builds its own (workers/)
            tracing.validate(config.tracing)
        else:
            tracing.configure(config.tracing)  # before the app is built: it mounts the middleware
            if config.embedded_fleet is not None:  # simulated engines here: their spans
                tracing.configure_engine(config.tracing)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid gateway settings: {problems}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers must be 1 or more, got {args.workers}", file=sys.stderr)
        return 2
    try:
        if args.workers > 1:
            from .gateway.workers.supervisor import run_supervised

            return run_supervised(settings, config, args.workers)
        run_gateway(settings, config)
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # flush the spans still batched
    return 0
