"""The batch-job runner behind `sage-cp batch` (installed as sage_cp_plugin.entrypoints.batch)."""

from __future__ import annotations

from .job import BatchJobOptions, BatchJobResult, run_batch_job

__all__ = ["BatchJobOptions", "BatchJobResult", "run_batch_job"]
