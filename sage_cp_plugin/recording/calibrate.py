"""Fit the simulator's step-time model to a recorded run (`sage-cp sim calibrate LOG`).

The simulator's engine takes ``t = b0 + b1 * prefill_tokens_in_step + b2 * decode_seqs_in_step``
per step (docs/architecture.md §8). A request log has no steps, only per-request times on the
coordinator's clock; each completed request gives two equations in (b0, b1, b2), built from
what overlapped it on the same instance:

- decode: its time per output token is one step, run alongside the other requests decoding on
  that instance then and the prompts prefilled then:
  ``tpot_i = b0 + b1 * P_i + b2 * B_i``, with B_i the time-averaged number of requests decoding
  during its decode (itself included) and P_i the prompt tokens prefilled on the instance
  during its decode, per step of it (each overlapping prefill counted by the share of it that
  overlaps).
- prefill: from dispatch to first token the API server first spends its own time on the
  request (c: HTTP, chat template, tokenization; once per request, beside the engine's
  steps), then it waits, on average, half of the step running when it arrived (when
  anything was running), then one step holds its prompt, the prompts prefilled alongside and
  the sequences decoding:
  ``prefill_i = c + (1 + h_i) * b0 + b1 * (n_i + Q_i) + (1 + h_i) * b2 * D_i`` with
  h_i = 0.5 if D_i > 0.

Without c, a per-request cost has to be paid per step: on real vLLM on this CPU the first
token of even a short prompt takes about 20 ms while a decode step takes 5-8 ms, and b0
absorbed the difference (every simulated decode step too slow). The simulator charges c as
`request_overhead_ms` before the engine queues the request.

The stacked system is solved by least squares (numpy), each equation divided by its target
so short and long requests weigh alike; a negative coefficient is set to 0 and the others
refitted. Caveats (stated in the fit's output): prefix-cache hits shorten prefills the log
cannot see (calibrate on unique prompts); a prompt longer than one step's token budget is
taken as one step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.recording.record import RequestLogRecord
from sage_cp_plugin.types import RequestKind, RequestStatus


@dataclass
class StepFit:
    """Fitted coefficients in the simulator's units, and how well they explain the log."""

    b0_ms: float
    b1_us_per_token: float
    b2_us_per_seq: float
    request_overhead_ms: float  # per request, before the engine's queue (API server)
    requests: int  # completed requests the fit used
    equations: int
    median_abs_rel_error: float  # of the fitted equations
    caveats: tuple[str, ...] = (
        "prefix-cache hits are invisible in a log: calibrate on unique prompts",
        "per-token API-server time (detokenization, SSE) is folded into b0 and b2",
    )

    def as_sim_fields(self) -> dict[str, float]:
        """`SimInstanceConfig` fields (a fleet file group or `--fleet` entry takes them)."""
        return {
            "b0_ms": round(self.b0_ms, 4),
            "b1_us_per_token": round(self.b1_us_per_token, 4),
            "b2_us_per_seq": round(self.b2_us_per_seq, 4),
            "request_overhead_ms": round(self.request_overhead_ms, 4),
        }

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def usable(rec: RequestLogRecord) -> bool:
    """Completed, generated at least two tokens, timed, ran whole on one instance."""
    t = rec.timings
    return (
        rec.state == RequestStatus.COMPLETED
        and rec.kind != RequestKind.EMBEDDING
        and rec.output_tokens >= 2
        and rec.decision.instance_id is not None
        and rec.decision.prefill_instance_id is None
        and t.queue_ms is not None
        and t.ttft_ms is not None
        and t.e2e_ms is not None
        and t.e2e_ms > t.ttft_ms >= t.queue_ms
    )


def _overlap(a0: np.ndarray, a1: np.ndarray, b0: float, b1: float) -> np.ndarray:
    out: np.ndarray = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)
    return out


def _equations(recs: Sequence[RequestLogRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows [b0, b1, b2] coefficients, targets (ms) and which rows are decode equations, for
    the requests of one instance."""
    arr = np.array([r.arrival_s * 1000.0 for r in recs])
    disp = arr + np.array([r.timings.queue_ms or 0.0 for r in recs])
    first = arr + np.array([r.timings.ttft_ms or 0.0 for r in recs])
    end = arr + np.array([r.timings.e2e_ms or 0.0 for r in recs])
    n_in = np.array([float(r.input_tokens) for r in recs])
    n_out = np.array([float(r.output_tokens) for r in recs])
    pre_len = np.maximum(first - disp, 1e-9)
    rows: list[list[float]] = []
    ys: list[float] = []
    decode: list[bool] = []
    for i in range(len(recs)):
        others = np.arange(len(recs)) != i
        # decode window of i
        dlen = end[i] - first[i]
        dec_ov = _overlap(first, end, first[i], end[i])[others]
        b_i = 1.0 + dec_ov.sum() / dlen
        pre_ov = _overlap(disp, first, first[i], end[i])[others]
        p_i = (n_in[others] * pre_ov / pre_len[others]).sum() / max(1.0, n_out[i] - 1.0)
        rows.append([1.0, p_i, b_i, 0.0])
        ys.append(dlen / max(1.0, n_out[i] - 1.0))
        decode.append(True)
        # prefill window of i
        plen = first[i] - disp[i]
        if plen <= 0:
            continue
        d_i = _overlap(first, end, disp[i], first[i])[others].sum() / plen
        q_i = (
            n_in[others] * _overlap(disp, first, disp[i], first[i])[others] / pre_len[others]
        ).sum()
        h = 1.5 if d_i > 1e-9 else 1.0
        rows.append([h, n_in[i] + q_i, h * d_i, 1.0])
        ys.append(plen)
        decode.append(False)
    return np.array(rows), np.array(ys), np.array(decode)


def _outliers(y: np.ndarray) -> np.ndarray:
    """Targets more than 3.5 robust z-scores from their median on a log scale (Iglewicz and
    Hoaglin's rule, 0.6745 * |x - median| / MAD, on x = log y: the fit weighs relative
    errors, so "far" is a ratio too). A decode window is one when a request's tokens came
    bunched in its last chunks (seen on real vLLM: 22 tokens in 0.09 ms where the others
    took 9 ms a token), which is not a step time; divided by its tiny target it outweighed
    the whole log and dragged b0 to 0 (every held-out E2E then 80 % short). On a linear
    scale a window of 0.06 ms among 4-11 ms ones was not far enough to drop."""
    y = np.log(np.maximum(y, 1e-6))
    med = float(np.median(y))
    mad = float(np.median(np.abs(y - med)))
    if mad <= 0:
        return np.zeros(len(y), dtype=bool)
    out: np.ndarray = 0.6745 * np.abs(y - med) / mad > 3.5
    return out


def _nnls(a: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares with every coefficient >= 0 (a negative one is set to 0 and
    the others refitted)."""
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active] * w[:, None], y * w, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef


def fit_step_model(records: Sequence[RequestLogRecord]) -> StepFit:
    """Least-squares (b0, b1, b2, c) from a request log (see the module docstring)."""
    good = [r for r in records if usable(r)]
    if len(good) < 3:
        raise ConfigurationError(
            f"calibration needs at least 3 completed requests with timings and 2+ output "
            f"tokens; the log has {len(good)} of {len(records)}"
        )
    by_instance: dict[str, list[RequestLogRecord]] = defaultdict(list)
    for r in good:
        by_instance[str(r.decision.instance_id)].append(r)
    parts = [_equations(v) for v in by_instance.values()]
    a = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    is_decode = np.concatenate([p[2] for p in parts])
    drop = np.zeros(len(y), dtype=bool)
    drop[is_decode] = _outliers(y[is_decode])
    a, y = a[~drop], y[~drop]
    w = 1.0 / np.maximum(y, 1e-6)  # relative errors
    coef = _nnls(a, y, w)
    rel = np.abs(a @ coef - y) / np.maximum(y, 1e-6)
    return StepFit(
        b0_ms=float(coef[0]),
        b1_us_per_token=float(coef[1] * 1000.0),
        b2_us_per_seq=float(coef[2] * 1000.0),
        request_overhead_ms=float(coef[3]),
        requests=len(good),
        equations=len(y),
        median_abs_rel_error=float(np.median(rel)),
    )


def split_alternate(
    records: Sequence[RequestLogRecord],
) -> tuple[list[RequestLogRecord], list[RequestLogRecord]]:
    """Every other request by arrival: (fit on, held out).

    Not first half / second half: the engine's speed on a shared host drifts over tens of
    seconds (real vLLM on this 2-core machine, same engine, same request sizes: decode steps
    of about 8 ms for a minute, then 4.5 ms, then 8 again, TTFT moving with them), so a fit
    on the first minute judged on the second measures the host's drift, not the model
    (recorded logs: first-half fits missed the second half's E2E median by +16 to +37 %,
    alternate halves by -8 to +11 %). Alternate requests see the same stretches of time."""
    ordered = sorted(records, key=lambda r: r.arrival_s)
    return ordered[0::2], ordered[1::2]
