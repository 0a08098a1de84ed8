"""Where `sage-cp serve` spends its CPU per request: cProfile inside the gateway process.

The gateway runs as its own process under `python -m cProfile` in front of 2 zero-latency
simulated instances (the setup of `bench_gateway_cpu.py`); this process drives it with the
same closed-loop raw-socket client, then stops it with SIGINT (the gateway returns normally,
so cProfile writes its statistics) and prints the functions with the most own time and
the calls per request of each. cProfile slows every Python call, so shares are a map of
where the work is, not a measurement of CPU per request (bench_gateway_cpu.py is that).

    python benchmarks/profile_gateway.py [--requests 2000] [--concurrency 16]
        [--streamed] [--top 40] [--save PATH.prof]
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
    args = ap.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        ap.error("--requests and --concurrency must be positive")

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="profile-gw-"))
    prof = tmp / "gateway.prof"
    try:
        _sims, cfg = start_sim_fleet(procs, 2, tmp)
        port = free_port()
        argv = [CLI[0], "-m", "cProfile", "-o", str(prof), *CLI[1:]]
        gw = procs.start([*argv, "serve", "--config", str(cfg), "--port", str(port)])
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
    print(f"{n} requests, concurrency {args.concurrency}, streamed {args.streamed}")
    print(f"{'own s':>8} {'cum s':>8} {'calls/req':>9}  function")
    raw = stats.stats  # type: ignore[attr-defined]
    key = 2 if args.sort == "tottime" else 3
    rows = sorted(raw.items(), key=lambda kv: kv[1][key], reverse=True)[: args.top]
    for (file, line, name), (_cc, nc, tt, ct, _callers) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"{tt:8.3f} {ct:8.3f} {nc / n:9.2f}  {name} ({where})")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
