"""Batch processing: many recordings through ingest → fit → reconstruct → evaluate on Dask.

``run_batch`` (the ``cst-neuro batch`` command) runs every recording's steps on Dask
distributed (a LocalCluster by default, or any scheduler address), keeps a manifest so
that reruns skip what is done and redo what changed, isolates failures per recording, and
writes a summary table (CSV and markdown). Modules: ``settings`` (the TOML config),
``manifest`` (input hashes, step keys, atomic writes, the folder lock), ``steps`` (what
runs on the workers), ``runner`` (the Dask client side), ``report`` (the summary).
"""

from cst_neuro.batch.report import BatchReport, RecordingResult
from cst_neuro.batch.runner import recording_names, run_batch
from cst_neuro.batch.settings import BatchSettings, EvaluateSettings
from cst_neuro.batch.steps import STEPS

__all__ = [
    "STEPS",
    "BatchReport",
    "BatchSettings",
    "EvaluateSettings",
    "RecordingResult",
    "recording_names",
    "run_batch",
]
