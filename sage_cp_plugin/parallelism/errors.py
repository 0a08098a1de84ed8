"""Errors of the parallelism planner: each says what was wrong and what would work."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from sage_cp_plugin.errors import ConfigurationError


class PlanningError(ConfigurationError):
    """Input the planner cannot use (bad sizes, unknown presets, contradictory SLOs)."""


class UnknownPresetError(PlanningError, KeyError):
    """A model, GPU or workload name that has no preset."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(
            f"unknown {kind} preset {name!r}; known {kind} presets: {', '.join(self.known)}"
        )

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0])


class ContradictorySLOError(PlanningError):
    """SLOs that no serving system can meet together (see docs/parallelism-planner.md)."""


class NoFeasibleLayoutError(PlanningError):
    """No layout of the given GPUs holds the model, or none meets the target."""

    def __init__(self, message: str, *, gpus_needed: int | None = None) -> None:
        self.gpus_needed = gpus_needed
        super().__init__(message)


def planning_error_from(exc: ValidationError) -> PlanningError:
    """The planner's own error raised inside a pydantic validator, or one naming the fields.

    Pydantic wraps a ``ValueError`` raised in a validator; callers of the planner should get
    the specific error (``ContradictorySLOError`` ...) back, not the wrapper.
    """
    parts: list[str] = []
    for err in exc.errors():
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, PlanningError):
            return inner
        loc = ".".join(str(x) for x in err.get("loc", ())) or exc.title
        parts.append(f"{loc}={err.get('input')!r}: {err.get('msg')}")
    return PlanningError("; ".join(parts))
