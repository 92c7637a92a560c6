"""The method and task registries: what applies where, and adding a method in one place."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import xarray as xr

from cst_neuro.evaluate import Task, evaluate_store
from cst_neuro.evaluate.methods import METHODS, MODEL, Method, available_methods, register
from cst_neuro.evaluate.models import MODEL_METHODS
from cst_neuro.evaluate.tasks import TASK_KINDS, TASKS


def test_every_task_and_family_has_methods() -> None:
    assert TASKS == ("upsample", "infill", "spatial", "forecast")
    for name, kind in TASK_KINDS.items():
        baselines = [m for m in available_methods(Task(name), 20) if METHODS[m].family != MODEL]
        assert baselines, name
        assert all(METHODS[m].family == kind.family for m in baselines)
        models = [m for m in available_methods(Task(name), 20) if METHODS[m].family == MODEL]
        assert models == list(MODEL_METHODS)  # the modes, then the cst variants
    assert all(m.predict is not None for m in METHODS.values() if m.family != MODEL)


def test_requirements_of_methods() -> None:
    assert "lowrank" in available_methods(Task("upsample"), 10)
    assert "lowrank" not in available_methods(Task("upsample"), 9)
    assert {"nearest", "idw"} <= set(available_methods(Task("spatial"), 5, positions=True))
    assert not {"nearest", "idw"} & set(available_methods(Task("spatial"), 5, positions=False))


def test_a_registered_method_runs_without_touching_the_runner(
    simulated: xr.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cst_neuro.evaluate.methods.METHODS", dict(METHODS))
    from cst_neuro.evaluate import methods

    def zeros(s: Any) -> tuple[np.ndarray, Any]:
        z = s.z
        return np.zeros_like(z), lambda frames: np.zeros((frames.size, z.shape[1]))

    register(Method("zeros", "interpolate", zeros))
    assert "zeros" in methods.available_methods(Task("infill"), 12)
    monkeypatch.setattr("cst_neuro.evaluate.runner.METHODS", methods.METHODS)
    report = evaluate_store(simulated, task="infill", methods=["zeros", "linear"])
    assert report.summary()["zeros_nmse"] == pytest.approx(1.0, abs=0.5)
