"""Where `sage-cp serve` spends its CPU per request: cProfile inside the gateway process.

The gateway runs as its own process under `python -m cProfile` in front of 2 zero-latency
simulated instances (the setup of `bench_gateway_cpu.py`); this process drives it with the
same closed-loop raw-socket client, then stops it with SIGINT (the gateway returns normally,
so cProfile writes its statistics) and prints the functions with the most own time and
the calls per request of each. cProfile slows every Python call, so shares are a map of
where the work is, not a measurement of CPU per request (bench_gateway_cpu.py is that).

The profiler's clock is the process's CPU time (`--timer cpu`, the default): with the wall
clock (`--timer wall`, cProfile's own default) a loopback socket write is charged the time
the writer spends preempted by the reader it wakes, which on a shared machine made
uvicorn's and aiohttp's writes look like 2.3 ms per request of "own" time (0.1-0.3 ms of
CPU). A "call" of a coroutine is one resumption, so calls per request count wake-ups.

    python benchmarks/profile_gateway.py [--requests 2000] [--concurrency 16]
        [--streamed] [--top 40] [--timer cpu|wall] [--save PATH.prof] [-- SERVE_ARGS]
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import shutil
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_gateway import CLI, Procs, free_port, start_sim_fleet, wait_http
from benchmarks.bench_gateway_cpu import drive


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--streamed", action="store_true")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    ap.add_argument("--save", type=Path, default=None, help="keep the .prof file here")
    ap.add_argument("--timer", choices=["cpu", "wall"], default="cpu",
                    help="the profiler's clock: process CPU time (default) or wall time")  # fmt: skip
    ap.add_argument("serve_args", nargs="*", help="extra `sage-cp serve` arguments, after --")
    args = ap.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        ap.error("--requests and --concurrency must be positive")

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="profile-gw-"))
    prof = tmp / "gateway.prof"
    try:
        _sims, cfg = start_sim_fleet(procs, 2, tmp)
        port = free_port()
        argv = [CLI[0], str(Path(__file__).with_name("cprofile_run.py")), args.timer, str(prof)]
        serve = ["serve", "--config", str(cfg), "--port", str(port), *args.serve_args]
        gw = procs.start([*argv, *serve])
        wait_http(f"http://127.0.0.1:{port}/health", timeout=300)
        eps = [("127.0.0.1", port)]
        asyncio.run(drive(eps, args.streamed, args.concurrency, args.requests))
        gw.send_signal(signal.SIGINT)
        gw.wait(120)
    finally:
        procs.stop_all()
    if not prof.exists():
        print("the gateway wrote no profile (did it stop normally?)", file=sys.stderr)
        return 1
    if args.save is not None:
        shutil.copy(prof, args.save)
    stats = pstats.Stats(str(prof))
    n = args.requests
    print(f"{n} requests, concurrency {args.concurrency}, streamed {args.streamed}, "
          f"timer {args.timer}; times are ms per request")  # fmt: skip
    print(f"{'own ms':>8} {'cum ms':>8} {'calls/req':>9}  function")
    raw = stats.stats  # type: ignore[attr-defined]
    key = 2 if args.sort == "tottime" else 3
    rows = sorted(raw.items(), key=lambda kv: kv[1][key], reverse=True)[: args.top]
    for (file, line, name), (_cc, nc, tt, ct, _callers) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"{1000 * tt / n:8.3f} {1000 * ct / n:8.3f} {nc / n:9.2f}  {name} ({where})")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
