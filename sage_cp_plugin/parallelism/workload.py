"""What the fleet must serve: request lengths, a target rate and latency SLOs.

Lengths are kept as samples (numpy arrays) rather than a mean, because SLO attainment
depends on the tail: a 4k-token prompt misses a TTFT SLO that the mean prompt meets.
Traces are read by the one trace loader, `sage_cp_plugin.workloads.traces` (bundled traces,
or ``$SAGE_CP_TRACES``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sage_cp_plugin.parallelism.errors import (
    ContradictorySLOError,
    PlanningError,
    UnknownPresetError,
    planning_error_from,
)
from sage_cp_plugin.workloads.traces import TRACE_NAMES, TraceError, load_trace, resolve_trace

IntArray = npt.NDArray[np.int64]

# Workload presets that name a trace (the trace loader's short names).
TRACE_PRESETS: dict[str, str] = TRACE_NAMES
# Enough samples for a stable attainment estimate (+-1 % at 95 % confidence needs ~10k; 2k
# gives +-2 %, and keeps planning well under a second).
MAX_SAMPLES = 2048


class WorkloadSpec(BaseModel):
    """Request length samples plus the service targets.

    SLOs follow docs/architecture.md §9: TTFT includes queueing; TPOT = (E2E - TTFT) / (output - 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    input_lengths: tuple[int, ...] = Field(min_length=1)
    output_lengths: tuple[int, ...] = Field(min_length=1)
    rate_rps: float | None = Field(default=None, gt=0, description="target arrival rate")
    ttft_slo_ms: float | None = Field(default=None, gt=0)
    tpot_slo_ms: float | None = Field(default=None, gt=0)
    attainment_target: float = Field(default=0.9, gt=0, le=1)

    @field_validator("input_lengths", "output_lengths")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [x for x in v if x <= 0]
        if bad:
            raise ValueError(f"token lengths must be > 0, got {bad[0]}")
        return v

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        if len(self.input_lengths) != len(self.output_lengths):
            raise PlanningError(
                f"input_lengths has {len(self.input_lengths)} samples but output_lengths has "
                f"{len(self.output_lengths)}; give one output length per input length"
            )
        check_slos(self.ttft_slo_ms, self.tpot_slo_ms)
        return self

    # -- views ------------------------------------------------------------------------------
    @property
    def inputs(self) -> IntArray:
        return np.asarray(self.input_lengths, dtype=np.int64)

    @property
    def outputs(self) -> IntArray:
        return np.asarray(self.output_lengths, dtype=np.int64)

    @property
    def mean_input(self) -> float:
        return float(np.mean(self.inputs))

    @property
    def mean_output(self) -> float:
        return float(np.mean(self.outputs))

    @property
    def has_slo(self) -> bool:
        return self.ttft_slo_ms is not None or self.tpot_slo_ms is not None

    def with_targets(
        self,
        *,
        rate_rps: float | None = None,
        ttft_slo_ms: float | None = None,
        tpot_slo_ms: float | None = None,
    ) -> WorkloadSpec:
        """A copy with targets replaced where given (validated again)."""
        data = self.model_dump()
        for key, value in (
            ("rate_rps", rate_rps),
            ("ttft_slo_ms", ttft_slo_ms),
            ("tpot_slo_ms", tpot_slo_ms),
        ):
            if value is not None:
                data[key] = value
        return WorkloadSpec.model_validate(data)

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def fixed(
        cls,
        input_tokens: int,
        output_tokens: int,
        *,
        rate_rps: float | None = None,
        ttft_slo_ms: float | None = None,
        tpot_slo_ms: float | None = None,
    ) -> WorkloadSpec:
        if input_tokens <= 0 or output_tokens <= 0:
            raise PlanningError(
                f"input/output lengths must be > 0, got {input_tokens}:{output_tokens}"
            )
        return cls(
            name=f"fixed {input_tokens}:{output_tokens}",
            input_lengths=(input_tokens,),
            output_lengths=(output_tokens,),
            rate_rps=rate_rps,
            ttft_slo_ms=ttft_slo_ms,
            tpot_slo_ms=tpot_slo_ms,
        )

    @classmethod
    def from_trace(
        cls,
        path: str | Path,
        *,
        seed: int = 0,
        rate_rps: float | None = None,
        ttft_slo_ms: float | None = None,
        tpot_slo_ms: float | None = None,
    ) -> WorkloadSpec:
        """Lengths from an Azure CSV or a Mooncake JSONL trace (a path or a trace name);
        rate from its arrivals."""
        try:
            trace = resolve_trace(path)
            records = load_trace(trace)
        except TraceError as exc:
            raise PlanningError(str(exc)) from None
        if not records:
            raise PlanningError(f"trace {str(trace)!r} holds no request")
        inputs = np.array([r.input_tokens for r in records], dtype=np.int64)
        outputs = np.array([r.output_tokens for r in records], dtype=np.int64)
        arrivals = np.array([r.arrival_s for r in records], dtype=np.float64)
        span = float(arrivals.max() - arrivals.min())
        trace_rate = inputs.size / span if span > 0 else None
        if inputs.size > MAX_SAMPLES:
            idx = np.random.default_rng(seed).choice(inputs.size, MAX_SAMPLES, replace=False)
            inputs, outputs = inputs[idx], outputs[idx]
        rate = rate_rps or trace_rate
        return cls(
            name=trace.stem,
            input_lengths=tuple(int(x) for x in inputs),
            output_lengths=tuple(int(x) for x in outputs),
            rate_rps=rate,
            ttft_slo_ms=ttft_slo_ms,
            tpot_slo_ms=tpot_slo_ms,
        )


def check_slos(ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> None:
    """Reject SLO pairs no layout can honour together.

    The first token needs one full forward pass over the prompt, which reads every weight
    exactly as a decode step does and computes at least as much; so on any layout
    TTFT >= one decode step ~ TPOT. A TPOT SLO above the TTFT SLO is therefore
    contradictory (usually swapped arguments).
    """
    for name, v in (("ttft_slo_ms", ttft_slo_ms), ("tpot_slo_ms", tpot_slo_ms)):
        if v is not None and v <= 0:
            raise PlanningError(f"{name}={v} must be > 0")
    if ttft_slo_ms is not None and tpot_slo_ms is not None and tpot_slo_ms > ttft_slo_ms:
        raise ContradictorySLOError(
            f"tpot_slo_ms={tpot_slo_ms} exceeds ttft_slo_ms={ttft_slo_ms}: the first token "
            "costs at least one decode step, so TTFT >= TPOT on every layout; "
            "did you swap them?"
        )


def load_workload(
    spec: str | WorkloadSpec,
    *,
    rate_rps: float | None = None,
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
) -> WorkloadSpec:
    """``azure_conv`` | ``azure_code`` | ``mooncake`` | a trace path | ``IN:OUT`` tokens.

    Targets given here override the workload's own (a trace's arrival rate, for example)."""
    try:
        return _load_workload(spec, rate_rps, ttft_slo_ms, tpot_slo_ms)
    except ValidationError as exc:
        raise planning_error_from(exc) from None


def _load_workload(
    spec: str | WorkloadSpec,
    rate_rps: float | None,
    ttft_slo_ms: float | None,
    tpot_slo_ms: float | None,
) -> WorkloadSpec:
    if isinstance(spec, WorkloadSpec):
        return spec.with_targets(
            rate_rps=rate_rps, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms
        )
    text = spec.strip()
    if text in TRACE_PRESETS:
        return WorkloadSpec.from_trace(
            text,
            rate_rps=rate_rps,
            ttft_slo_ms=ttft_slo_ms,
            tpot_slo_ms=tpot_slo_ms,
        )
    if ":" in text and all(part.strip().lstrip("-").isdigit() for part in text.split(":", 1)):
        a, b = (int(part) for part in text.split(":", 1))
        return WorkloadSpec.fixed(
            a, b, rate_rps=rate_rps, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms
        )
    if Path(text).suffix in (".csv", ".jsonl"):
        return WorkloadSpec.from_trace(
            text, rate_rps=rate_rps, ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms
        )
    raise UnknownPresetError("workload", text, [*TRACE_PRESETS, "IN:OUT", "PATH.csv|.jsonl"])
