"""The operators this runner builds its pipeline from.

At run time they are `sage_cp_plugin.operators`; mypy checks `operators/` as a source
directory of its own (the package-dir mapping is invisible to it), so it reads them there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from operators import (
        ConcurrentFlatMap,
        JsonlSink,
        JsonlSource,
        OutageBackoff,
        RecordStats,
        ResultRecord,
        ResultWriter,
        completed_ids,
        count_lines,
        drop_failed_results,
        format_summary,
        parse_shard,
        use_control_plane,
    )
    from operators.backends import ManagerFactory
else:
    from sage_cp_plugin.operators import (
        ConcurrentFlatMap,
        JsonlSink,
        JsonlSource,
        OutageBackoff,
        RecordStats,
        ResultRecord,
        ResultWriter,
        completed_ids,
        count_lines,
        drop_failed_results,
        format_summary,
        parse_shard,
        use_control_plane,
    )
    from sage_cp_plugin.operators.backends import ManagerFactory

__all__ = [
    "ConcurrentFlatMap",
    "JsonlSink",
    "JsonlSource",
    "ManagerFactory",
    "OutageBackoff",
    "RecordStats",
    "ResultRecord",
    "ResultWriter",
    "completed_ids",
    "count_lines",
    "drop_failed_results",
    "format_summary",
    "parse_shard",
    "use_control_plane",
]
