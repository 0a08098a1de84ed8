"""Where a result came from: the code (commit, and whether the tree had uncommitted changes),
the machine and how busy it was. Every result file written by `sage-cp bench` and by the
scripts under benchmarks/ carries this, so a number can be traced to the code that made it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The package's own source folder: its git checkout is the code that ran, whatever the cwd.
_SOURCE = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """``commit`` (full hash) and ``dirty`` (tracked files changed since it); both None when
    the package does not run from a git checkout (an installed wheel), plus the version."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        version = metadata.version("sage-cp-plugin")
    except metadata.PackageNotFoundError:
        version = None
    return {"commit": commit, "dirty": None if status is None else bool(status), "version": version}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict[str, Any]:
    """Code version and machine of a run (JSON-ready)."""
    return code_version() | {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the cores inflates tails: the 1-minute load average says how much.
        "loadavg_1m": os.getloadavg()[0],
    }


def provenance_line(p: dict[str, Any]) -> str:
    """One Markdown line saying which code and machine produced a result."""
    if p.get("commit"):
        code = f"commit `{p['commit'][:12]}`" + (
            " **with uncommitted changes**" if p.get("dirty") else " (clean tree)"
        )
    else:
        code = f"sage-cp-plugin {p.get('version') or '(unknown version)'}, not a git checkout"
    return (
        f"Code: {code}. Machine: {p.get('cpu')}, {p.get('cores')} cores, Python "
        f"{p.get('python')}, load average {p.get('loadavg_1m', float('nan')):.2f} at the end."
    )


def write_stamped(
    out_dir: Path, stem: str, data: dict[str, Any], markdown: str
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``, both stamped with this run's provenance (the
    one writer of result files, used by `sage-cp bench` and the scripts in benchmarks/)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = data.get("provenance") or provenance()
    data = {**data, "provenance": stamp}
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(data, indent=1, default=str) + "\n")
    mpath.write_text(markdown.rstrip("\n") + "\n\n" + provenance_line(stamp) + "\n")
    return jpath, mpath
