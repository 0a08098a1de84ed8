"""`sage-cp ab report LOG`: per-arm latency percentiles, SLO attainment and cost, with
bootstrap confidence intervals, and which differences to the control arm are significant.

Bootstrap (percentile method): each arm's requests are resampled with replacement
`resamples` times (arms independently, as they are independent samples); a statistic's
interval is the 2.5th..97.5th percentile of its resampled values, and the interval of a
difference (arm - control) comes from the paired resampled values of the two arms. A
difference is significant when its interval excludes 0. Latencies are over completed
requests; SLO attainment over requests that carried an SLO (failures count as misses); cost
is the mean per finished request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sage_cp_plugin.errors import ConfigurationError

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
Stat = Callable[[np.ndarray], np.ndarray]  # (resamples, n) -> (resamples,)


def read_outcomes(path: str | Path) -> list[dict[str, Any]]:
    """Outcome rows of an experiment's outcome log (its rotated `.1` file first, when
    present), or of the coordinator's request log (`recording/`: a folder, or a file of
    `RequestLogRecord` lines; its `arm` field is the experiment's arm)."""
    p = Path(path)
    if p.is_dir() or _is_request_log(p):
        return _from_request_log(p)
    files = [q for q in (p.with_name(p.name + ".1"), p) if q.exists()]
    if not files:
        raise ConfigurationError(f"no experiment log at {str(p)!r}")
    rows: list[dict[str, Any]] = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{f}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "state" not in row:
                raise ConfigurationError(f"{f}:{n}: not an outcome line (no 'state')")
            rows.append(row)
    return rows


def _is_request_log(p: Path) -> bool:
    if not p.is_file():
        return False
    with p.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "schema_version" in row and "timings" in row


def _from_request_log(p: Path) -> list[dict[str, Any]]:
    from sage_cp_plugin.recording.importer import read_request_log

    rows = []
    for rec in read_request_log(p):
        t = rec.timings
        rows.append(
            {
                "arm": rec.arm,
                "request_id": rec.request_id,
                "state": rec.state.value,
                "ttft_ms": t.ttft_ms,
                "tpot_ms": t.tpot_ms,
                "e2e_ms": t.e2e_ms,
                "queue_ms": t.queue_ms,
                "slo_met": rec.slo_met,
                "cost": rec.cost,
            }
        )
    return rows


def _pct(q: float) -> Stat:
    return lambda a: np.percentile(a, q, axis=1)


def _mean(a: np.ndarray) -> np.ndarray:
    return np.asarray(a.mean(axis=1))


METRICS: list[tuple[str, str, Stat]] = [
    ("ttft_ms_p50", "ttft_ms", _pct(50)),
    ("ttft_ms_p90", "ttft_ms", _pct(90)),
    ("tpot_ms_p50", "tpot_ms", _pct(50)),
    ("tpot_ms_p90", "tpot_ms", _pct(90)),
    ("e2e_ms_p50", "e2e_ms", _pct(50)),
    ("e2e_ms_p90", "e2e_ms", _pct(90)),
    ("slo_attainment", "slo_met", _mean),
    ("cost_per_request", "cost", _mean),
]


def _values(rows: Sequence[dict[str, Any]], field: str) -> np.ndarray:
    if field == "slo_met":
        return np.array([float(bool(r["slo_met"])) for r in rows if r.get("slo_met") is not None])
    if field == "cost":
        return np.array([float(r["cost"]) for r in rows if r.get("cost") is not None])
    return np.array(
        [float(r[field]) for r in rows if r["state"] == "completed" and r.get(field) is not None]
    )


def _resampled(values: np.ndarray, stat: Stat, resamples: int, rng: np.random.Generator) -> Any:
    if values.size == 0:
        return None
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    return stat(values[idx])


def _interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [50 * (1 - CONFIDENCE), 100 - 50 * (1 - CONFIDENCE)])
    return [float(lo), float(hi)]


def ab_report(
    rows: Sequence[dict[str, Any]],
    *,
    control: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Per arm: estimates with intervals; per other arm: differences to `control`."""
    arms = list(dict.fromkeys(str(r["arm"]) for r in rows if r.get("arm") is not None))
    if not arms:
        raise ConfigurationError("the log has no line with an arm: was an experiment running?")
    control = control or arms[0]
    if control not in arms:
        raise ConfigurationError(f"no arm {control!r} in the log; arms: {', '.join(arms)}")
    rng = np.random.default_rng(seed)
    by_arm = {a: [r for r in rows if r.get("arm") == a] for a in arms}
    boot: dict[str, dict[str, Any]] = {a: {} for a in arms}
    out_arms: dict[str, Any] = {}
    for a in arms:
        rs = by_arm[a]
        entry: dict[str, Any] = {
            "requests": len(rs),
            "completed": sum(1 for r in rs if r["state"] == "completed"),
            "failed": sum(1 for r in rs if r["state"] != "completed"),
            "total_cost": float(sum(r.get("cost") or 0.0 for r in rs)),
        }
        for name, field, stat in METRICS:
            vals = _values(rs, field)
            samples = _resampled(vals, stat, resamples, rng)
            boot[a][name] = samples
            entry[name] = None if samples is None else {
                "value": float(stat(vals[None, :])[0]),
                "ci": _interval(samples),
                "n": int(vals.size),
            }  # fmt: skip
        out_arms[a] = entry
    diffs: dict[str, Any] = {}
    for a in arms:
        if a == control:
            continue
        d: dict[str, Any] = {}
        for name, _, _ in METRICS:
            x, c = boot[a][name], boot[control][name]
            va, vc = out_arms[a][name], out_arms[control][name]
            if x is None or c is None or va is None or vc is None:
                d[name] = None
                continue
            lo, hi = _interval(x - c)
            d[name] = {
                "value": va["value"] - vc["value"],
                "ci": [lo, hi],
                "significant": bool(lo > 0 or hi < 0),
            }
        diffs[a] = d
    return {
        "control": control,
        "arms": out_arms,
        "differences": diffs,
        "resamples": resamples,
        "confidence": CONFIDENCE,
        "requests": len(rows),
        "without_arm": sum(1 for r in rows if r.get("arm") is None),
    }


def _fmt(e: dict[str, Any] | None, digits: int = 1, scale: float = 1.0) -> str:
    if e is None:
        return "-"
    lo, hi = e["ci"]
    return f"{e['value'] * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


_ROWS = [
    ("TTFT p50 ms", "ttft_ms_p50", 1, 1.0),
    ("TTFT p90 ms", "ttft_ms_p90", 1, 1.0),
    ("TPOT p50 ms", "tpot_ms_p50", 2, 1.0),
    ("TPOT p90 ms", "tpot_ms_p90", 2, 1.0),
    ("E2E p50 ms", "e2e_ms_p50", 1, 1.0),
    ("E2E p90 ms", "e2e_ms_p90", 1, 1.0),
    ("SLO attainment %", "slo_attainment", 1, 100.0),
    ("cost / request", "cost_per_request", 6, 1.0),
]


def markdown(doc: dict[str, Any]) -> str:
    arms = list(doc["arms"])
    pct = int(100 * doc["confidence"])
    lines = [
        f"# A/B report ({doc['requests']} requests; control `{doc['control']}`)",
        "",
        f"Values with {pct} % bootstrap intervals ({doc['resamples']} resamples).",
        "",
        "| metric | " + " | ".join(f"`{a}`" for a in arms) + " |",
        "|---|" + "---|" * len(arms),
        "| requests | " + " | ".join(str(doc["arms"][a]["requests"]) for a in arms) + " |",
        "| failed | " + " | ".join(str(doc["arms"][a]["failed"]) for a in arms) + " |",
    ]
    for label, key, digits, scale in _ROWS:
        cells = [_fmt(doc["arms"][a][key], digits, scale) for a in arms]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for a, d in doc["differences"].items():
        lines += ["", f"## `{a}` - `{doc['control']}`", "", "| metric | difference | significant |"]
        lines.append("|---|---|---|")
        for label, key, digits, scale in _ROWS:
            e = d.get(key)
            sig = "-" if e is None else ("yes" if e["significant"] else "no")
            lines.append(f"| {label} | {_fmt(e, digits, scale)} | {sig} |")
    if doc["without_arm"]:
        lines += ["", f"{doc['without_arm']} line(s) without an arm were left out."]
    return "\n".join(lines) + "\n"
