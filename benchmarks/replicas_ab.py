"""Three replicas vs one process, two versions of the code on the same windows (issue 16).

`run` replays the cells of `bench_replicas` (1,000-request windows x 3 seeds, traces
azure_conv, azure_code, mooncake at loads 0.5 and 0.8) with the checkout it is run from and
prints one JSON row per cell, tagged `--code`; run it from each worktree (`PYTHONPATH=.`).
`report` pairs the rows: per cell, each version's 3_shared P90 TTFT over one process's
(paired per seed) and cached prompt fraction difference, and writes
benchmarks/results/{stem}.{json,md,png}. Replays run on the virtual clock and are
deterministic (same code, same numbers), so one process's rows may come from either run.

usage: python -m benchmarks.replicas_ab run --code main [--variants one_process,3_shared]
           [--router prefix_aware] > main.log
       python -m benchmarks.replicas_ab report --one one.log --a main.log --b branch.log
           [--stem replicas_s13_n1000] [--router prefix_aware]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_replicas import OUT, run_cell
from sage_cp_plugin.virtual.provenance import provenance

TRACES = ("azure_conv", "azure_code", "mooncake")
LOADS = (0.5, 0.8)
SEEDS = 3
N = 1000


def run(code: str, variants: list[str], router: str) -> None:
    prov = provenance()
    for seed in range(SEEDS):  # seeds outermost: a run cut short has whole seeds
        for trace in TRACES:
            for load in LOADS:
                for v in variants:
                    row = run_cell(trace, load, seed, SEEDS, N, router, v)
                    row |= {"code": code, "commit": prov["commit"], "dirty": prov["dirty"]}
                    print(json.dumps(row), flush=True)


Key = tuple[str, float, int]


def _rows(path: Path, variant: str, router: str) -> dict[Key, dict[str, Any]]:
    if path.suffix == ".json":  # a bench_replicas result file
        rows = json.loads(path.read_text())["rows"]
    else:  # printed rows, one JSON object a line
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
    return {(r["trace"], r["load"], r["seed"]): r for r in rows
            if r["variant"] == variant and r["router"] == router}  # fmt: skip


def report(one: Path, a: Path, b: Path, stem: str, router: str, notes: Path | None) -> None:
    base = _rows(one, "one_process", router)
    va, vb = _rows(a, "3_shared", router), _rows(b, "3_shared", router)
    name_a = next(iter(va.values()))["code"] if va else "a"
    name_b = next(iter(vb.values()))["code"] if vb else "b"
    lines = [
        f"| trace | load | seeds | one process P90 TTFT ms | {name_a} P90 ms | {name_b} P90 ms "
        f"| {name_a} vs one | {name_b} vs one | {name_a} worst seed | {name_b} worst seed "
        f"| {name_a} cached vs one (pts) | {name_b} cached vs one (pts) | {name_b} within 5 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for t in TRACES:
        for load in LOADS:
            keys = [(t, load, s) for s in range(SEEDS) if (t, load, s) in base
                    and (t, load, s) in va and (t, load, s) in vb]  # fmt: skip
            if not keys:
                continue
            o = [base[k]["ttft_p90"] for k in keys]
            ra = [va[k]["ttft_p90"] / x for k, x in zip(keys, o, strict=True)]
            rb = [vb[k]["ttft_p90"] / x for k, x in zip(keys, o, strict=True)]
            oc = [base[k]["cached_prompt_fraction"] for k in keys]
            ca = [va[k]["cached_prompt_fraction"] - x for k, x in zip(keys, oc, strict=True)]
            cb = [vb[k]["cached_prompt_fraction"] - x for k, x in zip(keys, oc, strict=True)]
            b_cached = float(np.mean([vb[k]["cached_prompt_fraction"] for k in keys]))
            ok = float(np.mean(rb)) <= 1.05 and b_cached >= 0.95 * float(np.mean(oc))
            verdicts.append({"trace": t, "load": load, "seeds": len(keys),
                             f"{name_a}_ratio": float(np.mean(ra)),
                             f"{name_b}_ratio": float(np.mean(rb)),
                             f"{name_a}_per_seed": ra, f"{name_b}_per_seed": rb,
                             f"{name_a}_cached_pts": 100 * float(np.mean(ca)),
                             f"{name_b}_cached_pts": 100 * float(np.mean(cb)),
                             "within_5pct": ok})  # fmt: skip
            lines.append(
                f"| {t} | {load} | {len(keys)} | {np.mean(o):.0f} "
                f"| {np.mean([va[k]['ttft_p90'] for k in keys]):.0f} "
                f"| {np.mean([vb[k]['ttft_p90'] for k in keys]):.0f} "
                f"| {np.mean(ra):.3f} | {np.mean(rb):.3f} | {max(ra):.3f} | {max(rb):.3f} "
                f"| {100 * np.mean(ca):+.1f} | {100 * np.mean(cb):+.1f} | {'yes' if ok else 'NO'} |"
            )
    table = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps({
        "provenance": provenance(), "router": router,
        "inputs": {"one": str(one), "a": str(a), "b": str(b)},
        "one_process_rows": list(base.values()), "a_rows": list(va.values()),
        "b_rows": list(vb.values()), "verdicts": verdicts}, indent=1))  # fmt: skip
    head = (
        f"# Three replicas vs one process: {name_a} vs {name_b}\n\n{__doc__.split('usage:')[0]}\n"
    )
    tail = "\n" + notes.read_text() if notes is not None else ""
    (OUT / f"{stem}.md").write_text(head + f"Router: {router}.\n\n" + table + tail)
    _plot(verdicts, name_a, name_b, OUT / f"{stem}.png")
    print(table)


def _plot(verdicts: list[dict[str, Any]], name_a: str, name_b: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    xs = np.arange(len(verdicts))
    for j, name in enumerate((name_a, name_b)):
        ax.bar(xs + (j - 0.5) * 0.4, [v[f"{name}_ratio"] for v in verdicts], 0.4, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.05, color="r", ls="--", lw=0.8)
    ax.set_xticks(xs, [f"{v['trace']}@{v['load']}" for v in verdicts], fontsize=7)
    ax.set_ylim(0.9, max(1.1, *(v[f"{n}_ratio"] for v in verdicts for n in (name_a, name_b))))
    ax.set_title("3 replicas sharing state: P90 TTFT / one process (mean of seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--code", required=True, help="the tag of this checkout's rows")
    r.add_argument("--variants", default="one_process,3_shared")
    r.add_argument("--router", default="prefix_aware")
    p = sub.add_parser("report")
    p.add_argument("--one", type=Path, required=True, help="rows with one_process")
    p.add_argument("--a", type=Path, required=True, help="rows of the baseline's 3_shared")
    p.add_argument("--b", type=Path, required=True, help="rows of the change's 3_shared")
    p.add_argument("--stem", default="replicas_ab")
    p.add_argument("--router", default="prefix_aware")
    p.add_argument("--notes", type=Path, help="Markdown appended to the table (what, how)")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.code, args.variants.split(","), args.router)
    else:
        report(args.one, args.a, args.b, args.stem, args.router, args.notes)


if __name__ == "__main__":
    main()
