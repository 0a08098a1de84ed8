"""How often a request misses its TPOT target: the tail, from the output-length distribution.

The mean-TPOT bound (``capacity.py``: ``tpot = b0 / (1 - rho)``) sizes a replica for its
*average* step. What misses a TPOT SLO is a request whose few decode steps happen to carry
other requests' prefills: on a colocated replica every step that admits a new prompt is
``b1 * prompt_tokens`` longer, and a request's TPOT is the mean of *its* steps,
``(e2e - ttft) / (k - 1)`` for ``k`` output tokens. A 13-token answer shares 12 steps with
whatever arrives meanwhile; a 2,000-token prompt landing in one of them (0.15 s on a 70B
model) is enough to miss a 100 ms target. So the miss rate is set by the short outputs and
the prompt lengths, not by the means -- which is why a fleet sized for the mean TPOT missed
on the azure_code trace (short outputs, long prompts; session 5's closing note).

The model, per output length ``k`` (``m = k - 1`` decode steps):

- each of its decode steps costs ``b0 + b2 * n`` (``n``: the running batch, Little's law)
  plus the prefill it carries, and step ``j`` carries the prompts that arrived during step
  ``j - 1``: the request's own prefill step (``b0 + b1 * isl + b2 * n``; long prompts make it
  long) and then its first ``m - 1`` decode steps, ``T`` each at the target: a window
  ``D = own_step + (m - 1) * T``;
- prompts arrive at the replica as a Poisson process of rate ``x`` (its share of the
  fleet's arrivals), so the prompt tokens prefilled in its steps are compound Poisson:
  ``N ~ Poisson(x * D)`` prompts, lengths drawn from the observed prompt distribution;
- it misses when ``b1 * S > m * (T - b0 - b2 * n)``.

The compound Poisson tail is computed on a token grid (its characteristic function is
``exp(x * D * (phi(w) - 1))``: one FFT per output length, no sampling; prompt lengths rounded
to the nearest grid point, within 1 % of a Monte Carlo estimate in the tests). Output and prompt lengths are
given as equally weighted samples (quantiles of what completed recently); ``length_samples``
builds them from a mean and ``cv^2`` (a log-normal) when only moments are known.
The ``work_factor`` (observed / predicted TPOT, the autoscaler's correction) scales ``b0``,
``b1`` and ``b2`` alike. Everything here is pure and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sage_cp_plugin.elastic.capacity import StepModel

_GRID = 2048  # token-grid points of one compound-Poisson evaluation (zero-padded to 2x)
_QUANTILES = 32  # samples a length distribution is summarised by


def length_samples(mean: float, cv2: float, n: int = _QUANTILES) -> tuple[float, ...]:
    """``n`` equally weighted quantiles (mid-probabilities) of a log-normal with this mean and
    squared coefficient of variation: the distribution when only moments are known."""
    if mean <= 0:
        return ()
    if cv2 <= 0:
        return (float(mean),) * n
    s2 = math.log1p(cv2)
    mu = math.log(mean) - s2 / 2
    p = (np.arange(n) + 0.5) / n
    z = np.sqrt(2.0) * _erfinv(2 * p - 1)
    return tuple(float(v) for v in np.exp(mu + math.sqrt(s2) * z))


def summarise(values: Sequence[float], n: int = _QUANTILES) -> tuple[float, ...]:
    """``n`` mid-probability quantiles of observed ``values`` (empty: nothing observed)."""
    if len(values) == 0:
        return ()
    p = (np.arange(n) + 0.5) / n * 100
    return tuple(float(v) for v in np.percentile(np.asarray(values, dtype=float), p))


def _erfinv(y: np.ndarray) -> np.ndarray:
    """Inverse error function (Giles' single-precision approximation, ~1e-7; numpy has none)."""
    w = -np.log((1.0 - y) * (1.0 + y))
    small = w < 5.0
    ws = w - 2.5
    wl = np.sqrt(np.maximum(w, 5.0)) - 3.0
    ps = np.polyval([2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                     0.00021858087, -0.00125372503, -0.00417768164, 0.246640727,
                     1.50140941], ws)  # fmt: skip
    pl = np.polyval([-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844,
                     0.00573950773, -0.0076224613, 0.00943887047, 1.00167406,
                     2.83297682], wl)  # fmt: skip
    out: np.ndarray = np.where(small, ps, pl) * y
    return out


def compound_poisson_tail(rate_x_time: float, marks: Sequence[float] | np.ndarray,
                          threshold: float) -> float:  # fmt: skip
    """P(sum of ``N ~ Poisson(rate_x_time)`` marks drawn from ``marks`` > ``threshold``)."""
    if threshold < 0:
        return 1.0
    if rate_x_time <= 0 or len(marks) == 0:
        return 0.0
    m = np.asarray(marks, dtype=float)
    top = float(m.max())
    # Bernstein's inequality for a sum of bounded marks (mean mu, variance v = lambda E[L^2]):
    # P(|S - mu| > t) <= exp(-t^2 / (2 (v + top * t / 3))). Far from the bulk the answer is
    # 0 or 1 within 1e-9 and the FFT is skipped (most output lengths of a fleet that meets
    # its SLO are there; this keeps a decision to a few transforms).
    mu = rate_x_time * float(m.mean())
    v = rate_x_time * float((m * m).mean())
    t = abs(threshold - mu)
    if t > 0 and math.exp(-t * t / (2.0 * (v + top * t / 3.0))) < 1e-9:
        return 0.0 if threshold > mu else 1.0
    # The grid covers the threshold and the bulk of the sum (mean + 10 sd): mass past twice
    # the grid would wrap around onto small sums and hide part of the tail.
    bulk = mu + 10.0 * math.sqrt(v)
    width = max(1.0, (max(threshold, bulk) + top) / (_GRID - 1))
    bins = np.minimum(np.rint(m / width).astype(int), _GRID - 1)
    pmf = np.bincount(bins, minlength=_GRID).astype(float) / len(m)
    size = 2 * _GRID  # zero padding: mass beyond the grid wraps into the upper half only
    cf = np.fft.rfft(pmf, size)
    dist = np.fft.irfft(np.exp(rate_x_time * (cf - 1.0)), size)
    cut = math.floor(threshold / width)  # grid sums > threshold start at cut + 1
    below = float(np.clip(dist[: cut + 1], 0.0, None).sum())
    return min(1.0, max(0.0, 1.0 - below))


def tpot_miss(m: StepModel, rate_per_replica: float, outputs: Sequence[float],
              prompts: Sequence[float], target_s: float,
              work_factor: float = 1.0) -> float:  # fmt: skip
    """Share of requests (over the ``outputs`` samples) whose TPOT exceeds ``target_s`` on a
    colocated replica receiving ``rate_per_replica`` requests/s (see the module doc).
    Requests of one output token have no TPOT and never miss it."""
    outs = [float(k) for k in outputs]
    if not outs:
        return 0.0
    b0, b1, b2 = (m.b0_s * work_factor, m.b1_s_per_token * work_factor,
                  m.b2_s_per_seq * work_factor)  # fmt: skip
    x = rate_per_replica
    isl = float(np.mean(prompts)) if len(prompts) else 0.0
    osl = float(np.mean(outs))
    rho = x * (isl * b1 + osl * b2)
    if rho >= 1.0:
        return 1.0
    batch = min(x * osl * b0 / (1.0 - rho), float(m.max_num_seqs))
    per_step = target_s - b0 - b2 * batch  # what a step may spend on prefill on average
    own_step = b0 + b1 * isl + b2 * batch  # the step that prefills the request itself
    if per_step <= 0:
        return sum(k >= 2 for k in outs) / len(outs)
    marks = np.asarray(prompts, dtype=float)
    mean_mark = float(marks.mean()) if len(marks) else 0.0
    counts: dict[int, int] = {}
    for k in outs:
        steps = max(math.ceil(k) - 1, 0)
        if steps:
            counts[steps] = counts.get(steps, 0) + 1
    misses = 0.0
    for steps in sorted(counts):
        # Decode step j carries the prompts that arrived during step j - 1: its own prefill
        # step, then its first steps - 1 decode steps (at the target's length).
        arrivals = x * (own_step + (steps - 1) * target_s)
        threshold = steps * per_step / b1
        tail = compound_poisson_tail(arrivals, marks, threshold)
        misses += counts[steps] * tail
        if tail < 1e-6 and threshold > arrivals * mean_mark:
            # Below saturation the budget grows with the steps faster than the spread of
            # the prefill they carry, so longer answers miss less still: stop here.
            break
    return misses / len(outs)


def mean_tpot(m: StepModel, rate_per_replica: float, outputs: Sequence[float],
              prompts: Sequence[float]) -> float:  # fmt: skip
    """The mean over requests of their TPOT (what a latency histogram's mean reports), by the
    same window as ``tpot_miss``: a request of ``m`` decode steps carries the prompts that
    arrived during its own prefill step and ``m - 1`` average steps, so short answers after
    long prompts average far above the step-time mean ``b0 / (1 - rho)`` (1.9x on Mooncake's
    mix at 1.5 req/s per replica). The autoscaler's TPOT correction compares the observed
    mean with *this*, so a model that is right is not "corrected" into more replicas."""
    outs = [float(k) for k in outputs if k >= 2]
    if not outs:
        return m.b0_s
    b0, b1, b2 = m.b0_s, m.b1_s_per_token, m.b2_s_per_seq
    isl = float(np.mean(prompts)) if len(prompts) else 0.0
    osl = float(np.mean(outputs))
    x = rate_per_replica
    rho = x * (isl * b1 + osl * b2)
    if rho >= 1.0:
        return math.inf
    step = b0 / (1.0 - rho)
    batch = min(x * osl * step, float(m.max_num_seqs))
    own_step = b0 + b1 * isl + b2 * batch
    prefill_rate = x * isl * b1  # prefill seconds arriving per second
    total = 0.0
    for k in outs:
        steps = math.ceil(k) - 1
        window = own_step + (steps - 1) * step
        total += b0 + b2 * batch + prefill_rate * window / steps
    return total / len(outs)
