"""Shared helpers for benchmark reports: machine description and result writing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sage_cp_plugin.virtual.replay_report import environment

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU, cores, Python, platform, git commit (+ dirty flag) and load average."""
    return environment()


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath = RESULTS / f"{name}.json"
    mpath = RESULTS / f"{name}.md"
    jpath.write_text(json.dumps(data, indent=2) + "\n")
    mpath.write_text(markdown)
    return jpath, mpath
