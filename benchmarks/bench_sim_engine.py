"""CPU cost of the simulated engine alone (no coordinator, no HTTP): Azure-code-length requests
submitted round-robin to a few `SimEngine`s on the virtual clock, 8 at a time every 4 ms.
Prints the minimum CPU time over `--repeat` runs (the least disturbed by a busy machine).

    python benchmarks/bench_sim_engine.py [--engines 8] [--requests 4000] [--repeat 3]

To compare two versions of the code, run it from each checkout, one right after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sage_cp_plugin.sim import SimInstanceConfig
from sage_cp_plugin.sim.engine import SimEngine
from sage_cp_plugin.virtual.clock import run_virtual
from sage_cp_plugin.workloads import AZURE_CODE, load_azure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engines", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    trace = load_azure(AZURE_CODE, max_input_tokens=8000)
    recs = [trace[int(i)] for i in rng.integers(0, len(trace), size=a.requests)]
    vocab = [f"w{i}" for i in range(5000)]
    prompts = [[vocab[j] for j in rng.integers(0, 5000, size=r.prompt_tokens)] for r in recs]

    async def run() -> int:
        engines = [SimEngine(SimInstanceConfig(seed=i)) for i in range(a.engines)]
        seqs = []
        for k, (r, p) in enumerate(zip(recs, prompts, strict=True)):
            if k % a.engines == 0:
                await asyncio.sleep(0.004)
            seqs.append(engines[k % a.engines].submit(p, r.output_tokens))
        await asyncio.gather(*(s.done for s in seqs))
        for e in engines:
            e.render_metrics()
            await e.stop()
        return sum(e.counters.steps for e in engines)

    best = float("inf")
    steps = 0
    for _ in range(a.repeat):
        cpu = time.process_time()
        steps = run_virtual(run())
        best = min(best, time.process_time() - cpu)
    print(f"{a.engines} engines, {a.requests} requests, {steps} steps: min CPU {best:.3f} s")


if __name__ == "__main__":
    main()
