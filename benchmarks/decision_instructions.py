"""Machine instructions per decision inside a real replay, counted by callgrind, A vs B.

Thread-CPU timings of a decision move by 30-50 % between runs on this shared machine, and
`decision_work`'s bytecode counts miss what C code does (a cut that moves a loop into C
calls looks free there). Here valgrind's callgrind counts the instructions the CPU executes
(`Ir`) inside the pure decision (`planning.plan_head`) only: the replay calls it through
`operator.call`, and callgrind collects only while that C function is on the stack
(`--toggle-collect=_operator_call`; nothing else in a replay uses `operator.call`). The count
does not depend on the machine's load: the same code and trace give the same number, to a
fraction of a percent (allocator and hash-seed effects). The replay is
`decision_cost_replay`'s (Azure 2023 code trace at 70 % of the fleet's capacity, the whole
coordinator on the virtual clock). Figures are per `plan_head` call (every call, also those
that dispatched nothing: with the same decisions both checkouts make the same calls); the
chosen instances' hash shows both made the same decisions. Valgrind slows the replay ~50x.
`--part prefix_view` counts instead the approximate prefix view's work per request (hashing
the prompt at admission, every `cached_tokens` asked by decisions and bookings, indexing the
dispatch: `ApproximatePrefixCache.prepare`, `.cached_tokens`, `.on_dispatch`, each called
through `operator.call`; `plan_head` is then not), per request of the trace.

usage: python -m benchmarks.decision_instructions --a /path/to/main --b . --instances 64,256 \
           --routers prefix_aware,round_robin --n 600 [--part plan|prefix_view] [--name NAME]
Writes benchmarks/results/decision_instructions.{json,md,png} (`--name`); `--plot NAME` only
redraws NAME.png from NAME.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import RESULTS, write_results

_INNER = r"""
import hashlib, json, operator, sys
sys.path.insert(0, {root!r})
import sage_cp_plugin.dispatch as dispatch
import sage_cp_plugin.planning as planning
from benchmarks.decision_cost_replay import fleet, workload
from sage_cp_plugin.routing.cache_view import ApproximatePrefixCache
from sage_cp_plugin.virtual.runner import CoordinatorConfig, run_replay

counts = [0, 0]
if {part!r} == "plan":
    plan = planning.plan_head

    def plan_head(*a):
        action = operator.call(plan, *a)
        counts[0] += 1
        if isinstance(action, planning.Launch):
            counts[1] += 1
        return action

    dispatch.plan_head = plan_head
else:  # prefix_view: its three methods, each through operator.call
    def through_call(name):
        inner = getattr(ApproximatePrefixCache, name)
        def wrapped(*a):
            return operator.call(inner, *a)
        setattr(ApproximatePrefixCache, name, wrapped)

    for name in ("prepare", "cached_tokens", "on_dispatch"):
        through_call(name)
res = run_replay(workload({inst}, {n}), fleet({inst}), CoordinatorConfig(router={router!r}))
if {part!r} != "plan":
    counts = [{n}, len(res.outcomes)]
chosen = "|".join(str(o.instance_id) for o in res.outcomes)
print(json.dumps({{"calls": counts[0], "launches": counts[1],
                  "decisions_sha": hashlib.sha256(chosen.encode()).hexdigest()[:16]}}))
"""


def count(root: str, inst: int, router: str, n: int, part: str = "plan") -> dict[str, Any]:
    """Run one replay from checkout `root` under callgrind; Ir inside `plan_head` (or the
    prefix view's methods: `part`)."""
    code = _INNER.format(root=os.path.abspath(root), inst=inst, n=n, router=router, part=part)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--toggle-collect=_operator_call",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.abspath(root),
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        with open(out) as f:
            text = f.read()
    match = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    if match is None:
        raise RuntimeError("no totals in callgrind output")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    ir = int(match.group(1))
    rev = subprocess.run(
        ["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        **info,
        "commit": rev,
        "ir_total": ir,
        "ir_per_call": ir / max(info["calls"], 1),
    }


def plot(name: str) -> None:
    """NAME.png: instructions per decision, A and B side by side per (instances, router)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
    labels = [f"{r['instances']} inst\n{r['router']}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.6))
    a = [r["a"]["ir_per_call"] / 1000 for r in rows]
    b = [r["b"]["ir_per_call"] / 1000 for r in rows]
    ax.bar([x - 0.2 for x in xs], a, 0.4, label=f"A {rows[0]['a']['commit']}")
    ax.bar([x + 0.2 for x in xs], b, 0.4, label=f"B {rows[0]['b']['commit']}")
    for x, r in zip(xs, rows, strict=True):
        ax.text(x + 0.2, b[x], f"{r['a_over_b']:.2f}x", ha="center", va="bottom")
    ax.set_xticks(list(xs), labels)
    part = rows[0].get("part", "plan")
    ax.set_ylabel(
        "thousand instructions per " + ("plan_head call" if part == "plan" else "request")
    )
    ax.set_title(
        "Instructions per "
        + ("decision" if part == "plan" else "request in the prefix view")
        + " in a real replay (callgrind)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", help="only redraw NAME.png from NAME.json")
    ap.add_argument("--a", help="checkout A (baseline)")
    ap.add_argument("--b", default=".", help="checkout B")
    ap.add_argument("--instances", default="64,256")
    ap.add_argument("--routers", default="prefix_aware,round_robin")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--name", default="decision_instructions")
    ap.add_argument("--part", choices=("plan", "prefix_view"), default="plan")
    ap.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="A and B at once")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot)
        return
    if not args.a:
        ap.error("--a is required")
    rows: list[dict[str, Any]] = []
    for inst in (int(x) for x in args.instances.split(",")):
        for router in args.routers.split(","):
            with ThreadPoolExecutor(args.jobs) as pool:  # each job is a valgrind process
                fa = pool.submit(count, args.a, inst, router, args.n, args.part)
                fb = pool.submit(count, args.b, inst, router, args.n, args.part)
                a, b = fa.result(), fb.result()
            row = {
                "instances": inst,
                "router": router,
                "n": args.n,
                "part": args.part,
                "a": a,
                "b": b,
                "a_over_b": a["ir_per_call"] / b["ir_per_call"],
                "same_decisions": a["decisions_sha"] == b["decisions_sha"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    what = "plan_head call" if args.part == "plan" else "request (prefix view's methods)"
    lines = [
        f"# Instructions per {what} in a real replay (callgrind), A vs B",
        "",
        (__doc__ or "").split("\n\n")[1].replace("\n", " "),
        "",
        f"A = `{rows[0]['a']['commit']}` ({args.a}), B = `{rows[0]['b']['commit']}` ({args.b}); "
        f"first {args.n} rows of the trace; PYTHONHASHSEED=0.",
        "",
        "| instances | router | calls | dispatched | A Ir/call | B Ir/call | A/B "
        "| same decisions |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['instances']} | {r['router']} | {r['b']['calls']} | {r['b']['launches']} "
            f"| {r['a']['ir_per_call']:,.0f} | {r['b']['ir_per_call']:,.0f} "
            f"| {r['a_over_b']:.2f}x | {'yes' if r['same_decisions'] else 'NO'} |"
        )
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
    lines += ["", f"Result digest `{digest}`. Counts do not depend on the machine's load."]
    write_results(args.name, {"rows": rows}, "\n".join(lines) + "\n")
    plot(args.name)


if __name__ == "__main__":
    main()
