"""1,000 slow or idle connections against gateway variants, rounds alternated (issue 11).

The slow-connection section of benchmarks/bench_hostile.py (benchmarks/hostile_slow.py)
against several gateways in one run: every variant's `sage-cp serve` runs for the whole run
(same embedded fleet, same flags, same timeouts), and each round runs one without/with pass
per variant, in an order rotated every round, so a change in the machine's load falls on
all of them. Per variant: chat latency without/with pooled over the rounds and by phase of
the slow clients (connecting, trickling, closing, after), closes per kind, the gateway's own
deadline lateness, CPU seconds; the machine's load average is read before every pass.

A variant is `NAME=PYTHON` (an interpreter whose `sage_cp_plugin` is the code to measure,
e.g. another worktree's venv; `@` for this one) with optional extra `sage-cp serve` flags
after a space:

    python benchmarks/bench_slow_ab.py --rounds 3 \\
        --variant "before=/path/to/main/.venv/bin/python" --variant "after=@" \\
        [--variant "after-no-freeze=@ --no-gc-freeze"] [--out hostile-slow-ab]

Writes benchmarks/results/<out>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = ROOT / "benchmarks" / "loop_probe"
sys.path.insert(0, str(ROOT))

from benchmarks.bench_hostile import CHAT, TIMEOUTS, start_gateway  # noqa: E402
from benchmarks.common import machine, write_results  # noqa: E402
from benchmarks.hostile_slow import (  # noqa: E402
    PHASES,
    one_round,
    server_lateness,
    summarise,
)


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest.strip():
        raise SystemExit(f"--variant {text!r}: expected NAME=PYTHON [serve flags...]")
    python, *extra = shlex.split(rest)
    python = sys.executable if python == "@" else python
    if not Path(python).exists():
        raise SystemExit(f"--variant {name}: no interpreter at {python}")
    return name, python, extra


def code_of(python: str) -> str:
    """Where that interpreter's sage_cp_plugin lives, and its git commit (if any)."""
    where = subprocess.run(
        [python, "-c", "import sage_cp_plugin, os; print(os.path.dirname(os.path.dirname("
         "sage_cp_plugin.__file__)))"], capture_output=True, text=True, check=True,
        cwd=tempfile.gettempdir(),
    ).stdout.strip()  # fmt: skip
    commit = subprocess.run(
        ["git", "-C", where, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return f"{where} @ {commit or 'no git'}{' (modified)' if dirty else ''}"


async def run(variants: list[tuple[str, str, list[str]]], rounds: int, n: int, nice: int) -> dict:
    gateways: dict[str, tuple[subprocess.Popen[str], str]] = {}
    probes = Path(tempfile.mkdtemp(prefix="sage-cp-loop-probe-"))
    try:
        for name, python, extra in variants:
            # The same loop probe in every variant (loop_probe/sitecustomize.py).
            env = {**os.environ, "PYTHONPATH": str(PROBE_DIR),
                   "SAGE_CP_LOOP_PROBE": str(probes / f"{name}.json")}  # fmt: skip
            # Started outside any source tree: `-m` puts the working directory first on
            # sys.path, which would mix this tree's package into another interpreter's.
            gateways[name] = start_gateway(
                *extra, python=python, cwd=tempfile.gettempdir(), env=env
            )
        await asyncio.sleep(2.0)  # the embedded fleets' first probes
        limit = 4 * max(TIMEOUTS.values())
        raw: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
        late0 = {name: server_lateness(url) for name, (_, url) in gateways.items()}
        loads: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        names = [name for name, _, _ in variants]
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                proc, url = gateways[name]
                loads[name].append(os.getloadavg()[0])
                r = await one_round(url, proc.pid, CHAT, limit, n, nice)
                raw[name].append(r)
                d = [ms for _, ms, _ in r["during"]]
                print(f"round {i + 1} {name}: load {loads[name][-1]:.1f}, chat with slow "
                      f"clients max {max(d):.0f} ms", flush=True)  # fmt: skip
        out: dict[str, Any] = {}
        for name, python, extra in variants:
            _, url = gateways[name]
            s = summarise(raw[name], TIMEOUTS, n, nice, late0[name], server_lateness(url))
            s.pop("close_times")
            s.update(code=code_of(python), serve_flags=extra, load_avg_1m=loads[name])
            out[name] = s
    finally:
        for proc, _ in gateways.values():
            proc.terminate()
            proc.wait(30)
    for name, _, _ in variants:
        probe = json.loads((probes / f"{name}.json").read_text())
        out[name]["loop"] = loop_stalls(probe, raw[name])
    return out


def _phase_windows(r: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Each phase's span in one round (as in hostile_slow._phase)."""
    (b0, b1), (w0, w1) = r["windows"]["without"], r["windows"]["with"]
    opened = max(c["opened"] for c in r["clients"])
    closes = [c["closed"] for c in r["clients"] if c["by_server"]] or [w1]
    first, last = min(closes) - 0.05, max(closes) + 0.05
    return {"without": (b0, b1), "connecting": (w0, opened), "trickling": (opened, first),
            "closing": (first, last), "after": (last, w1)}  # fmt: skip


def loop_stalls(probe: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase, pooled over rounds: the gateway's longest stretch of its own work (thread
    CPU in one probe wait), stretches over 10 ms of it, and its garbage collections."""
    out: dict[str, Any] = {}
    spans = [_phase_windows(r) for r in rounds]
    for phase in ("without", *PHASES):
        mine = [(a, b) for w in spans for a, b in [w[phase]]]

        def inside(t: float, mine: list[tuple[float, float]] = mine) -> bool:
            return any(a <= t < b for a, b in mine)

        late = [x for x in probe["late"] if inside(x[0])]
        gcs = [g for g in probe["gc"] if inside(g[0])]
        full = [g for g in gcs if g[3] == 2]
        out[phase] = {
            "seconds": sum(b - a for a, b in mine),
            "max_cpu_ms": max((x[2] for x in late), default=0.0) * 1000,
            "max_late_ms": max((x[1] for x in late), default=0.0) * 1000,
            "stalls_over_10ms_cpu": sum(1 for x in late if x[2] > 0.010),
            "gc_cpu_ms": sum(g[2] for g in gcs) * 1000,
            "full_gcs": len(full),
            "full_gc_max_cpu_ms": max((g[2] for g in full), default=0.0) * 1000,
        }
    return out


def markdown(data: dict[str, Any]) -> str:
    v = data["variants"]
    lines = [
        "# 1,000 slow or idle connections: gateway variants, rounds alternated (issue 11)", "",
        f"Machine: {data['machine'].get('cpu', '?')}; rounds {data['rounds']}, "
        f"{data['connections']} slow connections a round (4/10 idle, 3/10 dribbling headers, "
        "3/10 dribbling bodies) from a process at nice "
        f"{data['slow_nice']}; timeouts header/body/idle 5/5/5 s.", "",
        "| variant | code | serve flags | load (1 min) per round |", "|---|---|---|---|",
    ]  # fmt: skip
    for name, s in v.items():
        loads = ", ".join(f"{x:.1f}" for x in s["load_avg_1m"])
        lines.append(f"| {name} | {s['code']} | {' '.join(s['serve_flags']) or '-'} | {loads} |")
    lines += ["", "Chat latency (sequential normal requests, ms), without and with the slow "
              "connections, by phase of the slow clients; ratios with/without:", "",
              "| variant | without p50 / p99 | with p50 / p99 | ratio p50 / p99 | "
              + " | ".join(f"{p} n, p50 / p99 / max" for p in PHASES) + " |",
              "|---|---|---|---|" + "---|" * len(PHASES)]  # fmt: skip
    for name, s in v.items():
        b, d = s["chat_latency_before_ms"], s["chat_latency_during_ms"]
        cells = []
        for p in PHASES:
            r = s["during_by_phase_ms"][p]
            cells.append(f"{r['n']}, {r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f}"
                         if r["n"] else "0")  # fmt: skip
        lines.append(
            f"| {name} | {b['p50']:.1f} / {b['p99']:.1f} | {d['p50']:.1f} / {d['p99']:.1f} | "
            f"**{s['ratio_p50']:.2f} / {s['ratio_p99']:.2f}** | " + " | ".join(cells) + " |"
        )
    lines += ["", "| variant | closed by the gateway (idle, header, body) | close after, max "
              "(s) | gateway lateness mean / max since start (ms) | gateway CPU s/s without "
              "/ with | slow clients CPU s/s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in v.items():
        k = s["by_kind"]
        closed = ", ".join(f"{k[x]['closed_by_server']}/{k[x]['connections']}" for x in k)
        late = s["server_lateness"]
        bw, dw = s["cpu_s"]["before"], s["cpu_s"]["during"]
        lines.append(
            f"| {name} | {closed} | {max(k[x]['close_after_s_max'] for x in k):.2f} | "
            f"{late['mean_ms'] or float('nan'):.1f} / {late['max_ms_since_start']:.1f} | "
            f"{bw['gateway'] / bw['seconds']:.2f} / {dw['gateway'] / dw['seconds']:.2f} | "
            f"{dw['slow_clients'] / dw['seconds']:.2f} |"
        )
    lines += ["", "The gateway's loop, from a probe inside it (benchmarks/loop_probe/): per phase, "
              "its longest stretch of its own work (thread CPU in one 2 ms probe wait; "
              "independent of the machine's load, unlike wall-clock lateness), how many "
              "stretches exceeded 10 ms of CPU, and its garbage collections (all "
              "generations' CPU; full collections, count and longest):", "",
              "| variant | phase | seconds | longest own stretch (ms CPU) | stretches > 10 ms | "
              "longest wake-up lateness (ms wall) | GC CPU (ms) | full GCs (longest, ms CPU) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in v.items():
        for phase, x in s["loop"].items():
            lines.append(
                f"| {name} | {phase} | {x['seconds']:.1f} | {x['max_cpu_ms']:.1f} | "
                f"{x['stalls_over_10ms_cpu']} | {x['max_late_ms']:.0f} | {x['gc_cpu_ms']:.1f} | "
                f"{x['full_gcs']} ({x['full_gc_max_cpu_ms']:.1f}) |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=PYTHON [flags]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--slow-nice", type=int, default=19)
    ap.add_argument("--out", default="hostile-slow-ab")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    if len({name for name, _, _ in variants}) != len(variants):
        raise SystemExit("--variant names must differ")
    data: dict[str, Any] = {"machine": machine(), "rounds": args.rounds,
                            "connections": args.connections, "slow_nice": args.slow_nice,
                            "timeouts_s": TIMEOUTS}  # fmt: skip
    data["variants"] = asyncio.run(run(variants, args.rounds, args.connections, args.slow_nice))
    md = markdown(data)
    write_results(args.out, data, md)
    print(md)


if __name__ == "__main__":
    main()
