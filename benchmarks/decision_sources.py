"""A short hash of the source files a replay variant's decisions come from.

The matrix's cell cache keys a replay by its inputs (trace, window, variant, seed, rate,
options); the code that decides is an input too. A cell replayed before a routing change
must not be reported as the changed router's result, so its key carries this hash and a
changed router simply has no cached cells. Per variant, so that changing one router does
not discard the baseline's cells (hours of CPU):
- its router's module and its policy's module, plus their base classes;
- for every router but round_robin, the load model and the rest of `sage_cp_plugin/routing`
  (the shared predicted-TTFT scoring, cache view, prefix index, give-way rule).
Changes to the dispatcher, the simulator or the coordinator shell affect every variant alike
and are not covered: after one, remove the cache file (the result files say which commit ran).
"""

from __future__ import annotations

import hashlib
import inspect
from functools import cache
from pathlib import Path

from sage_cp_plugin.plugins.registry import get_registry

PACKAGE = Path(__file__).resolve().parent.parent / "sage_cp_plugin"
# Routers whose decisions read none of the shared scoring modules.
_STANDALONE = frozenset({"round_robin"})


def _module_file(kind: str, name: str) -> Path:
    factory = get_registry().get(kind, name).factory  # type: ignore[arg-type]
    path = inspect.getsourcefile(factory)
    if path is None:
        raise ValueError(f"no source file for {kind} {name!r}")
    return Path(path).resolve()


@cache
def decision_hash(router: str, policy: str) -> str:
    """12 hex digits over the decision sources of `router` + `policy` (module docstring)."""
    files = {
        _module_file("router", router),
        _module_file("policy", policy),
        PACKAGE / "routing" / "base.py",
        PACKAGE / "policies" / "base.py",
    }
    if router not in _STANDALONE:
        files |= set((PACKAGE / "routing").glob("*.py")) | {PACKAGE / "load_model.py"}
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(
            str(f.relative_to(PACKAGE.parent) if f.is_relative_to(PACKAGE.parent) else f).encode()
        )
        h.update(f.read_bytes())
    return h.hexdigest()[:12]
