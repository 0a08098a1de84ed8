"""`sage-cp sim`: run simulated vLLM instances on consecutive ports until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

_ROLES = ("general", "prefill", "decode", "embedding")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "sim",
        help="run simulated vLLM instances (OpenAI-compatible HTTP on 127.0.0.1)",
        description=(
            "Start N simulated vLLM instances serving one model on consecutive ports from "
            "--port, print their URLs, and serve until Ctrl-C."
        ),
    )
    p.add_argument("--instances", "-n", type=int, default=1, help="number of instances")
    p.add_argument("--port", type=int, default=8000, help="port of the first instance")
    p.add_argument("--model", default="sim-model", help="served model name")
    p.add_argument("--role", choices=_ROLES, default="general")
    p.add_argument("--preset", default=None, help="engine preset (see --list-presets)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiplies every simulated duration; 0 = zero latency",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-kv-blocks", type=int, default=None, help="override the preset's")
    p.add_argument(
        "--kv-events-port",
        type=int,
        default=None,
        help=(
            "publish vLLM KV-cache events over ZeroMQ: instance i on port P+2i (PUB) and "
            "P+2i+1 (replay), on --host"
        ),
    )
    p.add_argument(
        "--scheduling-policy",
        choices=("fcfs", "priority"),
        default="fcfs",
        help="vLLM's --scheduling-policy: 'priority' orders by the request's priority field",
    )
    p.add_argument("--list-presets", action="store_true", help="print engine presets and exit")
    from sage_cp_plugin.tracing import cli as tracing_cli  # engine spans, as vLLM's flags

    tracing_cli.add_arguments(p, gateway=False)
    p.set_defaults(func=run)
    from . import cmd_calibrate  # `sage-cp sim calibrate LOG` (its own module)

    cmd_calibrate.register(p.add_subparsers(dest="sim_command", metavar="{calibrate}"))


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sage_cp_plugin.sim import PRESETS, SimInstanceConfig

    if args.list_presets:
        for p in PRESETS.values():
            print(
                f"{p.name:<24} b0={p.b0_ms}ms b1={p.b1_us_per_token}us/token "
                f"b2={p.b2_us_per_seq}us/seq kv_blocks={p.num_kv_blocks}  {p.description}"
            )
        return 0
    if args.instances < 1:
        print(f"error: --instances must be at least 1, got {args.instances}", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535 - args.instances + 1:
        print(f"error: --port {args.port} leaves no room for {args.instances} instances",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.kv_events_port is not None and not (
        1 <= args.kv_events_port <= 65535 - 2 * args.instances + 1
    ):
        print(f"error: --kv-events-port {args.kv_events_port} leaves no room for "
              f"{args.instances} instances (2 ports each)", file=sys.stderr)  # fmt: skip
        return 2
    overrides: dict[str, Any] = {}
    if args.preset is not None:
        overrides["preset"] = args.preset
    if args.num_kv_blocks is not None:
        overrides["num_kv_blocks"] = args.num_kv_blocks
    try:
        configs = [
            SimInstanceConfig(
                served_model_names=[args.model],
                role=args.role,
                time_scale=args.time_scale,
                seed=args.seed + i,
                scheduling_policy=args.scheduling_policy,
                **overrides,
                **_kv_events(args, i),
            )
            for i in range(args.instances)
        ]
    except ValidationError as exc:
        print(f"error: invalid simulator configuration:\n{exc}", file=sys.stderr)
        return 2
    from sage_cp_plugin import tracing
    from sage_cp_plugin.errors import ConfigurationError
    from sage_cp_plugin.tracing import cli as tracing_cli

    try:
        tracing.configure_engine(tracing_cli.config_from(args, None))
    except ConfigurationError as exc:  # a bad tracing setting: refused before serving
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(configs, args.host, args.port))
    except (OSError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()


def _kv_events(args: argparse.Namespace, i: int) -> dict[str, Any]:
    if args.kv_events_port is None:
        return {}
    port = args.kv_events_port + 2 * i
    return {
        "kv_events_endpoint": f"tcp://{args.host}:{port}",
        "kv_events_replay_endpoint": f"tcp://{args.host}:{port + 1}",
    }


async def _serve(configs: list[Any], host: str, port: int) -> int:
    from sage_cp_plugin.sim import SimFleet

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    async with SimFleet(configs, host=host, port=port) as fleet:
        for m in fleet.members:
            c = m.config
            events = f" kv_events={c.kv_events_endpoint}" if c.kv_events_endpoint else ""
            print(f"{m.url}  model={c.model_name} role={c.role} preset={c.preset}{events}",
                  flush=True)  # fmt: skip
        print(f"{len(fleet)} simulated instance(s) ready; Ctrl-C to stop", flush=True)
        await stop.wait()
    print("stopped", flush=True)
    return 0
