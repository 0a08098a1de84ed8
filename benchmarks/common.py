"""Shared helpers for benchmark reports: machine description and result writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sage_cp_plugin.virtual.provenance import provenance, write_stamped

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Code version (commit, dirty tree) and machine of this run; see
    sage_cp_plugin.virtual.provenance."""
    return provenance()


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """JSON + Markdown under benchmarks/results/, stamped with commit, dirty tree and machine."""
    return write_stamped(RESULTS, name, data, markdown)
