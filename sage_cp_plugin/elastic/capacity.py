"""How many replicas a load needs, from the engine's step-time model.

The model is the one the simulator runs and the parallelism planner calibrates
(docs/architecture.md §8): one engine step takes ``b0 + b1 * prefill_tokens + b2 *
decode_seqs``. A replica serving ``rate`` requests/s of ``isl`` prompt and ``osl`` output
tokens decodes a batch of ``n = rate * osl * tpot`` sequences (Little's law) and spends
``rate * isl * b1`` of every second on prefill, so its time per output token is

    tpot = b0 / (1 - rate * (isl * b1 + osl * b2))          (colocated, "general")

and the TPOT target ``T`` holds while ``rate * (isl * b1 + osl * b2) <= 1 - b0 / T``. A
prefill-only replica is bounded by ``rate * isl * b1 <= utilisation``; a decode-only replica
by ``rate * osl * b2 <= 1 - b0 / T``. Those budgets, divided into the load, give replica
counts per role; ``correction`` (observed / predicted latency, Dynamo-style) scales the
work per request so the estimate follows what the fleet really does.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field


class StepModel(BaseModel):
    """One replica's step-time coefficients (seconds; b1 per prompt token, b2 per sequence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    b0_s: float = Field(gt=0)
    b1_s_per_token: float = Field(gt=0)
    b2_s_per_seq: float = Field(gt=0)
    # Requests one replica runs at once: the engine's max_num_seqs, or the coordinator's
    # per-instance limit (max_concurrent_requests) when that is smaller.
    max_num_seqs: int = Field(256, gt=0)

    @classmethod
    def from_sim(cls, b0_ms: float, b1_us_per_token: float, b2_us_per_seq: float,
                 max_num_seqs: int = 256) -> StepModel:  # fmt: skip
        return cls(b0_s=b0_ms / 1e3, b1_s_per_token=b1_us_per_token / 1e6,
                   b2_s_per_seq=b2_us_per_seq / 1e6, max_num_seqs=max_num_seqs)  # fmt: skip

    def decode_budget(self, tpot_target_s: float) -> float:
        """Share of a replica's time left for per-token work at the TPOT target."""
        return max(0.0, 1.0 - self.b0_s / tpot_target_s)

    def predicted_tpot_s(self, rate_per_replica: float, isl: float, osl: float) -> float:
        busy = rate_per_replica * (isl * self.b1_s_per_token + osl * self.b2_s_per_seq)
        return math.inf if busy >= 1.0 else self.b0_s / (1.0 - busy)


def general_replicas(rate: float, isl: float, osl: float, m: StepModel, *, tpot_target_s: float,
                     utilisation: float, correction: float = 1.0) -> float:  # fmt: skip
    """Fractional replicas of colocated instances for ``rate`` requests/s."""
    work = rate * (isl * m.b1_s_per_token + osl * m.b2_s_per_seq) * correction
    budget = min(m.decode_budget(tpot_target_s), 1.0) * utilisation
    by_time = work / budget if budget > 0 else math.inf
    return max(by_time, _by_seqs(rate, osl, isl * m.b1_s_per_token + osl * m.b2_s_per_seq, m))


def _by_seqs(rate: float, osl: float, work_s: float, m: StepModel) -> float:
    """Replicas so that the running batch fits ``max_num_seqs``: a replica at ``x`` req/s runs
    ``n = x * osl * b0 / (1 - x * work_s)`` sequences (Little's law with the TPOT above), and
    ``n <= N`` solves to ``x <= N / (osl * b0 + N * work_s)``."""
    return rate * (osl * m.b0_s + m.max_num_seqs * work_s) / m.max_num_seqs


def prefill_replicas(rate: float, isl: float, m: StepModel, *, utilisation: float,
                     correction: float = 1.0) -> float:  # fmt: skip
    return rate * isl * m.b1_s_per_token * correction / utilisation


def decode_replicas(rate: float, osl: float, m: StepModel, *, tpot_target_s: float,
                    utilisation: float, correction: float = 1.0) -> float:  # fmt: skip
    budget = m.decode_budget(tpot_target_s) * utilisation
    by_time = rate * osl * m.b2_s_per_seq * correction / budget if budget > 0 else math.inf
    return max(by_time, _by_seqs(rate, osl, osl * m.b2_s_per_seq, m))
