"""Rule-generated traces of shapes the bundled ones do not have, for checking that routing
decisions generalise (issue 10: "results will be checked on traces this repository does not
have; tune nothing to a window").

Each family is written as a Mooncake-format JSONL file (``timestamp`` ms, ``input_length``,
``output_length``, ``hash_ids`` of 512-token blocks), so `sage-cp replay` and
`bench_matrix.py --traces NAME=FILE` read it like any user's trace. The parameters are round
numbers taken from public descriptions of LLM serving traffic, fixed before any replay and
never changed after looking at a result (changing one means re-running every router):

- ``gamma_cv4``: no sharing; gamma inter-arrival gaps with coefficient of variation 4 (BurstGPT
  describes bursty, gamma-like arrivals); prompts lognormal (median 600 tokens, sigma 1.0),
  outputs lognormal (median 200, sigma 1.0).
- ``multiturn``: chat sessions (Poisson session starts; geometric(0.3) turns (mean 3.3), at most 12;
  exponential think time, mean 30 s). Each session opens with one of 20 system prompts of
  1,024 tokens (Zipf 1.0 popularity); every turn's prompt is the whole conversation so far plus
  a new message (lognormal, median 150), so consecutive turns share a growing prefix.
- ``shared_system``: 90 % of requests start with one of 8 long system prompts (1,024-6,144
  tokens, Zipf 1.0), then a unique message (lognormal median 300); Poisson arrivals; outputs
  lognormal median 100.
- ``heavy_tail``: Pareto prompts (alpha 1.2, from 100 tokens) and outputs (alpha 1.5, from 20);
  Poisson arrivals; no sharing.
- ``ramp``: Poisson arrivals whose rate rises linearly to 4x over the trace (non-stationary);
  lognormal lengths as ``gamma_cv4``; no sharing.

Prompts are capped at 16,384 tokens and outputs at 2,048 (the matrix clips prompts there too).
The absolute rate does not matter: the matrix time-scales every window to its load.

Run: ``python benchmarks/holdout_traces.py --out DIR [--rows 6000] [--seed 0]``; then e.g.
``python benchmarks/bench_matrix.py --traces DIR/*.jsonl --routers prefix_aware ...``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

BLOCK = 512
MAX_IN, MAX_OUT = 16_384, 2_048
Row = tuple[float, int, int, list[int]]  # arrival s, input tokens, output tokens, hash ids


def _lognormal(rng: np.random.Generator, median: float, sigma: float, cap: int) -> int:
    return int(min(cap, max(1, round(median * float(np.exp(sigma * rng.standard_normal()))))))


def _pareto(rng: np.random.Generator, alpha: float, low: float, cap: int) -> int:
    return int(min(cap, round(low * (1.0 + float(rng.pareto(alpha))))))


def _zipf_pick(rng: np.random.Generator, n: int, s: float = 1.0) -> int:
    w = 1.0 / np.arange(1, n + 1) ** s
    return int(rng.choice(n, p=w / w.sum()))


class _Ids:
    """Fresh block ids; a prompt's ids are its shared blocks then fresh ones for the rest."""

    def __init__(self) -> None:
        self._next = itertools.count(1_000_000)

    def fresh(self, n: int) -> list[int]:
        return [next(self._next) for _ in range(n)]

    def blocks(self, shared: list[int], tokens: int) -> list[int]:
        n = -(-tokens // BLOCK)  # the last, partial block counts (as in Mooncake's traces)
        return shared[:n] + self.fresh(max(0, n - len(shared)))


def _unshared(
    rng: np.random.Generator, times: np.ndarray, lengths: Callable[[], tuple[int, int]]
) -> list[Row]:
    ids = _Ids()
    rows = []
    for t in times:
        n_in, n_out = lengths()
        rows.append((float(t), n_in, n_out, ids.blocks([], n_in)))
    return rows


def gamma_cv4(rng: np.random.Generator, n: int) -> list[Row]:
    shape = 1.0 / 16.0
    times = np.cumsum(rng.gamma(shape, 1.0 / shape, size=n))
    return _unshared(
        rng, times, lambda: (_lognormal(rng, 600, 1.0, MAX_IN), _lognormal(rng, 200, 1.0, MAX_OUT))
    )


def heavy_tail(rng: np.random.Generator, n: int) -> list[Row]:
    times = np.cumsum(rng.exponential(1.0, size=n))
    return _unshared(
        rng, times, lambda: (_pareto(rng, 1.2, 100, MAX_IN), _pareto(rng, 1.5, 20, MAX_OUT))
    )


def ramp(rng: np.random.Generator, n: int) -> list[Row]:
    # Rate r(i) rising linearly from 1 to 4 over the rows: gap i ~ Exp(mean 1 / r(i)).
    rates = 1.0 + 3.0 * np.arange(n) / max(1, n - 1)
    times = np.cumsum(rng.exponential(1.0, size=n) / rates)
    return _unshared(
        rng, times, lambda: (_lognormal(rng, 600, 1.0, MAX_IN), _lognormal(rng, 200, 1.0, MAX_OUT))
    )


def shared_system(rng: np.random.Generator, n: int) -> list[Row]:
    ids = _Ids()
    systems = [(k * BLOCK, ids.fresh(k)) for k in (2, 4, 6, 8, 10, 12, 12, 12)]
    times = np.cumsum(rng.exponential(1.0, size=n))
    rows = []
    for t in times:
        own = _lognormal(rng, 300, 1.0, MAX_IN)
        if rng.random() < 0.9:
            sys_tokens, sys_ids = systems[_zipf_pick(rng, len(systems))]
        else:
            sys_tokens, sys_ids = 0, []
        n_in = min(MAX_IN, sys_tokens + own)
        rows.append((float(t), n_in, _lognormal(rng, 100, 1.0, MAX_OUT), ids.blocks(sys_ids, n_in)))
    return rows


def multiturn(rng: np.random.Generator, n: int) -> list[Row]:
    ids = _Ids()
    systems = [ids.fresh(2) for _ in range(20)]
    rows: list[Row] = []
    start = 0.0

    def session(t0: float) -> Iterator[Row]:
        context = 2 * BLOCK
        blocks = list(systems[_zipf_pick(rng, len(systems))])
        turns = min(12, int(rng.geometric(0.3)))
        t = t0
        for _ in range(turns):
            context = min(MAX_IN, context + _lognormal(rng, 150, 1.0, MAX_IN))
            n_out = _lognormal(rng, 200, 1.0, MAX_OUT)
            mine = ids.blocks(blocks, context)
            # Full blocks are the conversation so far, shared by the next turn; the partial
            # last block changes with the next message, so it is never shared.
            blocks = mine[: context // BLOCK]
            yield (t, context, n_out, mine)
            context = min(MAX_IN, context + n_out)
            t += float(rng.exponential(30.0))

    while len(rows) < n:
        start += float(rng.exponential(2.0))
        rows.extend(session(start))
    rows.sort(key=lambda r: r[0])
    return rows[:n]


FAMILIES: dict[str, Callable[[np.random.Generator, int], list[Row]]] = {
    "gamma_cv4": gamma_cv4,
    "multiturn": multiturn,
    "shared_system": shared_system,
    "heavy_tail": heavy_tail,
    "ramp": ramp,
}


def write(path: Path, rows: list[Row]) -> None:
    t0 = rows[0][0] if rows else 0.0
    with path.open("w", encoding="utf-8") as f:
        for t, n_in, n_out, hids in rows:
            row = {
                "timestamp": round((t - t0) * 1000.0, 3),
                "input_length": n_in,
                "output_length": n_out,
                "hash_ids": hids,
            }
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="directory for <family>.jsonl")
    p.add_argument("--rows", type=int, default=6000, help="requests per trace (default 6000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error("--rows must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(args.families):
        rng = np.random.default_rng([args.seed, k])
        rows = FAMILIES[name](rng, args.rows)
        path = args.out / f"{name}.jsonl"
        write(path, rows)
        ins = np.array([r[1] for r in rows])
        shared = len({h for r in rows for h in r[3]}) / max(1, sum(len(r[3]) for r in rows))
        print(
            f"{path}: {len(rows)} rows over {rows[-1][0] - rows[0][0]:.0f} s, prompt median "
            f"{np.median(ins):.0f} tokens, distinct blocks / blocks {shared:.2f}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
