"""Capacity at SLO: the highest arrival rate at which a configuration still meets its SLO.

The headline number of llm-d's and DistServe's evaluations. Found by bracketing then
bisection over the rate: from a first guess, multiply by `growth` until a rate fails (or
divide until one passes), then halve the bracket until `hi / lo - 1 <= tolerance`. The answer
is the highest rate that was measured to pass (`lo`), never an interpolation. `meets(rate)`
is one measurement (replays at that rate); every call is recorded in `probes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_TOLERANCE = 0.05  # relative width of the final bracket
MAX_STEPS = 8  # bracketing steps each way before giving up


@dataclass
class CapacityResult:
    capacity_rps: float  # 0.0 when even the lowest probed rate failed
    bracket: tuple[float, float]  # (highest passing, lowest failing); inf when none failed
    probes: list[tuple[float, bool]] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE


def find_capacity(
    meets: Callable[[float], bool],
    guess: float,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    growth: float = 2.0,
) -> CapacityResult:
    """Highest rate passing `meets`, within `tolerance` (relative), starting at `guess`."""
    if guess <= 0 or not math.isfinite(guess):
        raise ValueError(f"guess must be a positive rate, got {guess!r}")
    if tolerance <= 0 or growth <= 1:
        raise ValueError(f"need tolerance > 0 and growth > 1, got {tolerance}, {growth}")
    probes: list[tuple[float, bool]] = []

    def probe(rate: float) -> bool:
        ok = meets(rate)
        probes.append((rate, ok))
        return ok

    lo, hi = 0.0, math.inf
    rate = guess
    if probe(rate):
        lo = rate
        for _ in range(MAX_STEPS):
            rate *= growth
            if not probe(rate):
                hi = rate
                break
            lo = rate
    else:
        hi = rate
        for _ in range(MAX_STEPS):
            rate /= growth
            if probe(rate):
                lo = rate
                break
            hi = rate
    if lo == 0.0 or math.isinf(hi):
        return CapacityResult(lo, (lo, hi), probes, tolerance)
    while hi / lo - 1.0 > tolerance:
        mid = math.sqrt(lo * hi)  # geometric: the bracket shrinks by the same ratio each step
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(lo, (lo, hi), probes, tolerance)
