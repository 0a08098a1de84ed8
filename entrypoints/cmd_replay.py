"""`sage-cp replay TRACE`: replay a trace through the real coordinator on a virtual clock and
compare routers and policies against one baseline (round_robin with fifo).

Router variants run with fifo, policy variants with round_robin, all on the same simulated
fleet, requests and options. Latency percentiles and throughput are over the steady state
(requests arriving in the middle 80 % of the arrival span); figures are means over seeds.
`--capacity` also finds each variant's highest arrival rate meeting the SLO (P90 TTFT and
P90 TPOT) by bracketing and bisection to a 5 % relative tolerance.

What-if: `--fleet` given more than once replays the trace on each fleet (same requests, one
router and one policy) and reports per fleet SLO attainment, GPU-hours, cost (and capacity at
SLO with `--capacity`), with a Pareto chart of cost against SLO attainment under `--out`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .output import write_json

DEFAULT_PRESET = "llama-3.1-8b-h100-tp1"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, comma-separated")
    return names


def _window(text: str) -> tuple[int, int]:
    try:
        start, count = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:COUNT, got {text!r}") from None
    if start < 0 or count < 1:
        raise argparse.ArgumentTypeError(f"need START >= 0 and COUNT >= 1, got {text!r}")
    return start, count


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return v


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "replay",
        help="replay a trace through the real coordinator and compare routers/policies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("trace", metavar="TRACE", help="trace file, or a bundled trace name")
    p.add_argument(
        "--format",
        choices=("auto", "mooncake", "azure", "jsonl", "log", "openai_batch"),
        default="auto",
        help="trace format (auto: by suffix and first row; a folder is a request log)",
    )
    p.add_argument(
        "--tokenizer",
        default="estimate",
        help="how an OpenAI batch file's prompts are measured: estimate (4 characters per "
        "token, the default), words (the simulator's tokenizer) or a Hugging Face name",
    )
    p.add_argument("--window", type=_window, metavar="START:COUNT", help="rows to replay")
    arrivals = p.add_mutually_exclusive_group(required=True)
    arrivals.add_argument(
        "--rate",
        type=_positive,
        metavar="RPS",
        help="mean arrival rate: timed traces are time-scaled to it (bursts kept), "
        "lengths-only traces get Poisson arrivals",
    )
    arrivals.add_argument(
        "--time-scale",
        type=_positive,
        metavar="X",
        help="multiply the trace's inter-arrival gaps by X (0.5 = twice as fast)",
    )
    p.add_argument(
        "--fleet",
        type=Path,
        action="append",
        metavar="fleet.yaml",
        help="fleet file (YAML: instances: [{count, preset, ...}]); give it several times "
        "to compare fleets (what-if)",
    )
    p.add_argument("--instances", type=int, metavar="N", help="simulated instances (default 8)")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help=f"engine preset of every instance (default {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--routers",
        type=_names,
        metavar="a,b,...",
        default=None,
        help="comma-separated (default: every built-in router; with several --fleet: one "
        "router, default round_robin)",
    )
    p.add_argument(
        "--policies",
        type=_names,
        metavar="a,b,...",
        default=None,
        help="comma-separated (with several --fleet: one policy, default fifo)",
    )
    p.add_argument(
        "--transport",
        choices=("direct", "asgi"),
        default="direct",
        help="how the executor reaches the simulators: direct (completions call the "
        "simulator's handlers without ASGI framing; default) or asgi (the full app); "
        "equivalence: tests/test_virtual_direct.py",
    )
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds 0..N-1 (default 1)")
    p.add_argument("--slo-ttft-ms", type=_positive, metavar="X")
    p.add_argument("--slo-tpot-ms", type=_positive, metavar="Y")
    p.add_argument("--capacity", action="store_true", help="find each variant's capacity at SLO")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    p.add_argument("--out", type=Path, metavar="DIR", help="write JSON + Markdown + PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sage_cp_plugin.errors import ConfigurationError

    try:
        doc = _replay(args)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from sage_cp_plugin.virtual.replay_report import markdown, write_out_dir

    if args.json is not None:
        write_json(args.json, doc)
        print(f"wrote {args.json}", file=sys.stderr)
    if "fleets" in doc:
        return _write_whatif(args, doc)
    if args.out is not None:
        paths = write_out_dir(doc, args.out)
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    print(markdown(doc))
    return 0


DEFAULT_ROUTERS = [
    "round_robin",
    "load_balanced",
    "prefix_aware",
    "locality",
    "kv_aware",
    "affinity",
]


def _write_whatif(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    from sage_cp_plugin.virtual.replay_report import write_out_dir
    from sage_cp_plugin.virtual.whatif import markdown, pareto_plot

    if args.out is not None:
        paths = write_out_dir(doc, args.out, "whatif", render=markdown, draw=pareto_plot)
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    print(markdown(doc))
    return 0


def _replay(args: argparse.Namespace) -> dict[str, Any]:
    from sage_cp_plugin.errors import ConfigurationError
    from sage_cp_plugin.virtual.capacity import DEFAULT_TOLERANCE
    from sage_cp_plugin.virtual.compare import (
        BASELINE,
        ReplaySetup,
        build_variants,
        capacity,
        capacity_fields,
        compare,
        with_baseline_ratios,
    )
    from sage_cp_plugin.virtual.fleet_file import context_tokens, load_fleet, preset_fleet
    from sage_cp_plugin.virtual.provenance import provenance
    from sage_cp_plugin.workloads.traces import read_trace

    if args.fleet is not None and (args.instances is not None or args.preset is not None):
        raise ConfigurationError("give either --fleet or --instances/--preset, not both")
    if args.seeds < 1:
        raise ConfigurationError(f"--seeds must be at least 1, got {args.seeds}")
    fleets = args.fleet or []
    whatif = len(fleets) > 1
    if whatif:
        for flag, names in (("--routers", args.routers), ("--policies", args.policies)):
            if names is not None and len(names) != 1:
                raise ConfigurationError(
                    f"with several --fleet give one name to {flag} (every fleet runs the "
                    f"same decisions), got {','.join(names)}"
                )
    variants = build_variants(
        args.routers or (["round_robin"] if whatif else DEFAULT_ROUTERS),
        args.policies or ["fifo"],
    )
    instances = 8 if args.instances is None else args.instances
    preset = args.preset or DEFAULT_PRESET

    def members(seed: int) -> list[Any]:
        if fleets:
            return load_fleet(fleets[0], seed=seed)
        return preset_fleet(instances, preset, seed=seed)

    start, count = args.window or (0, None)
    trace = read_trace(
        args.trace, format=args.format, start=start, limit=count, tokenizer=args.tokenizer
    )
    for note in trace.notes:
        print(f"note: {note}", file=sys.stderr)
    if not trace.records:
        raise ConfigurationError(f"trace {str(trace.path)!r} has no rows in window {args.window}")
    whatif_fleets = _fleet_variants(fleets) if whatif else []
    context = min(context_tokens(f.members(0)) for f in whatif_fleets) if whatif else 0
    context = context or context_tokens(members(0))
    records, clipped = [], 0
    for r in trace.records:
        room = context - r.output_tokens
        if r.prompt is None and r.input_tokens > room:
            r = r.model_copy(update={"input_tokens": max(1, room)})
            clipped += 1
        records.append(r)
    if clipped:
        print(
            f"note: {clipped} prompt(s) clipped to the fleet's context ({context} tokens)",
            file=sys.stderr,
        )
    setup = ReplaySetup(
        windows=lambda _seed: records,
        members=members,
        timed=trace.timed,
        rate=args.rate,
        time_scale=args.time_scale,
        slo_ttft_ms=args.slo_ttft_ms,
        slo_tpot_ms=args.slo_tpot_ms,
        direct=args.transport == "direct",
    )
    if len(fleets) == 1:  # a fleet with prefill/decode pools runs with PD separation
        from sage_cp_plugin.virtual.fleet_file import pd_config, read_fleet_file

        pd = pd_config(read_fleet_file(fleets[0]))
        if pd is not None:
            setup.coordinator = {"enable_pd_separation": True, "pd_config": pd}
    seeds = list(range(args.seeds))
    setup.workload(0)  # fail fast on a missing --rate or a bad combination

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    first = setup.workload(0)
    span = first[-1].arrival_s - first[0].arrival_s if len(first) > 1 else 0.0
    workload = {
        "trace": str(trace.path),
        "format": trace.format,
        "window": [start, len(trace.records)],
        "requests": len(records),
        "timed": trace.timed,
        "rate_rps": args.rate,
        "time_scale": args.time_scale,
        "arrival_span_s": span,
        "prompts_clipped": clipped,
    }

    def common() -> dict[str, Any]:
        return {
            "workload": workload,
            "seeds": seeds,
            "slo_ttft_ms": args.slo_ttft_ms,
            "slo_tpot_ms": args.slo_tpot_ms,
            "capacity_tolerance": DEFAULT_TOLERANCE if args.capacity else None,
            "wall_s": time.perf_counter() - t0,
            "environment": provenance(),
            "transport": args.transport,
        }

    if whatif:
        from sage_cp_plugin.virtual.whatif import compare_fleets

        chosen = variants[-1]  # the one router or policy given (else the baseline)
        return {
            "fleets": compare_fleets(
                setup, chosen, whatif_fleets, seeds, with_capacity=args.capacity, progress=progress
            ),
            "router": chosen.router,
            "policy": chosen.policy,
            **common(),
        }
    entries = compare(setup, variants, seeds, progress)
    if args.capacity:
        guess = args.rate or setup.native_rate()
        base = capacity(setup, BASELINE, seeds, guess, progress=progress)
        caps = {BASELINE.name: base}
        for v in variants:
            if v != BASELINE:
                # Start at the baseline's capacity: the bracket is then usually one step wide.
                g = base.capacity_rps or guess
                caps[v.name] = capacity(setup, v, seeds, g, growth=1.25, progress=progress)
        for e in entries:
            e.update(capacity_fields(caps[e["name"]]))
        with_baseline_ratios(entries)
    return {
        "variants": entries,
        "baseline": BASELINE.name,
        "fleet": str(fleets[0]) if fleets else f"{instances} x {preset}",
        **common(),
    }


def _fleet_variants(paths: list[Path]) -> list[Any]:
    """One `FleetVariant` per fleet file; names from `name:` or the file's stem, unique."""
    from sage_cp_plugin.errors import ConfigurationError
    from sage_cp_plugin.virtual.fleet_file import load_fleet, pd_config, read_fleet_file
    from sage_cp_plugin.virtual.whatif import FleetVariant

    out = []
    for path in paths:
        spec = read_fleet_file(path)
        try:
            pd = pd_config(spec)
        except ConfigurationError as exc:
            raise ConfigurationError(f"fleet file {str(path)!r}: {exc}") from None
        name = spec.name or path.stem
        out.append(FleetVariant(name, _loader(path), pd=pd, source=str(path)))
        load_fleet(path)  # fail fast on a bad group
    names = [f.name for f in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigurationError(
            f"fleet names must differ (set `name:` in the fleet files): {', '.join(dup)}"
        )
    return out


def _loader(path: Path) -> Any:
    from sage_cp_plugin.virtual.fleet_file import load_fleet

    def members(seed: int) -> list[Any]:
        return load_fleet(path, seed=seed)

    return members
