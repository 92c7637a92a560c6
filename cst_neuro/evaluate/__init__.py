"""Evaluation harness: CST against classic baselines on held-out samples of real recordings.

``evaluate_store(store, task=..., factor=..., methods=..., seeds=..., max_minutes=...)``
returns an ``EvaluationReport`` (``.summary()``, ``.write(out_dir)``). Tasks and splits
live in ``tasks``, baselines in ``baselines``, scores in ``metrics``, the paper's toy data
in ``spirals`` and spike timing on ground-truth recordings in ``spikes``.
"""

from cst_neuro.evaluate.methods import available_methods
from cst_neuro.evaluate.report import EvaluationReport
from cst_neuro.evaluate.runner import evaluate_store
from cst_neuro.evaluate.tasks import TASKS, Task

__all__ = ["TASKS", "EvaluationReport", "Task", "available_methods", "evaluate_store"]
