"""Process facts from Linux's /proc, for the benchmarks and tests that watch server processes
(CPU time by session, children of a gateway, whether a pid still runs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on, or None once the process is gone.

    The command name (field 2) is skipped by its closing parenthesis, since it may hold spaces;
    so index 0 is the state, 1 the parent pid, 3 the session, 11..14 utime/stime/cutime/cstime.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of every process still there when it is read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(entry)) is not None:
            yield int(entry), fields


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (zombies excluded)."""
    return [p for p, f in processes() if int(f[1]) == pid and f[0] != "Z"]


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def cpu_s(fields: list[str]) -> float:
    """User + system CPU seconds of a process, with what it collected from exited children."""
    return sum(int(x) for x in fields[11:15]) / CLK_TCK
