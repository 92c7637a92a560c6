"""evaluate_store: every task end to end, no leakage into training, complete reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.evaluate import EvaluationReport, available_methods, evaluate_store
from cst_neuro.evaluate import models as eval_models
from cst_neuro.evaluate.recording import load_traces
from cst_neuro.evaluate.runner import _resolve_methods
from cst_neuro.evaluate.tasks import Task, make_split
from cst_neuro.schema import new_recording

BASELINES = {
    "upsample": ["hold", "linear", "pchip", "cubic", "gp", "lowrank"],
    "infill": ["linear", "cubic", "gp"],
    "spatial": ["mean", "nearest", "idw", "ridge"],
    "forecast": ["persistence", "ar", "var"],
}


@pytest.mark.parametrize("task", list(BASELINES))
def test_baselines_of_every_task_score_on_held_out_samples(simulated: xr.Dataset, task) -> None:
    report = evaluate_store(simulated, task=task, methods=BASELINES[task], seeds=2)
    summary = report.summary()
    assert len(report.runs) == 2
    for method in BASELINES[task]:
        assert np.isfinite(summary[f"{method}_nmse"]) and summary[f"{method}_nmse"] > 0
    assert summary["best_baseline_nmse"] == min(summary[f"{m}_nmse"] for m in BASELINES[task])
    if task in ("upsample", "infill"):  # clean truth present: scored against it as well
        assert np.isfinite(summary["linear_clean_nmse"])
        assert summary["linear_nmse"] < summary.get("hold_nmse", np.inf)


def test_models_train_on_observed_training_samples_only(
    simulated: xr.Dataset, monkeypatch: pytest.MonkeyPatch, tiny_fit: dict
) -> None:
    """What fit receives holds no hidden sample and nothing of validation or test segments."""
    import cst_neuro.train as train

    seen = []
    real_fit = train.fit

    def spy(ds, output, *, config=None, **kw):
        seen.append(ds.copy(deep=True))
        return real_fit(ds, output, config=config, **kw)

    monkeypatch.setattr(train, "fit", spy)
    report = evaluate_store(
        simulated, task="infill", methods=["linear", "cst"], seeds=1, fit_settings=tiny_fit
    )
    assert np.isfinite(report.summary()["cst_nmse"])
    traces = load_traces(simulated)
    split = make_split(Task("infill"), *traces.shape, seed=0)
    dff = seen[0]["dff"].values
    assert np.isnan(dff[~split.train_observed]).all()
    assert np.isfinite(dff[split.train_observed]).all()


def test_upsampling_models_see_the_decimated_recording(simulated: xr.Dataset) -> None:
    traces = load_traces(simulated)
    split = make_split(Task("upsample", factor=4), *traces.shape, seed=0)
    ds = eval_models.masked_recording(traces, split.train_observed, stride=4)
    assert ds.attrs["fs"] == traces.fs / 4 and ds.sizes["time"] == 120
    assert np.array_equal(ds["time"].values, traces.time[::4])
    assert not ds["valid"].values[split.segment[::4] != 0].any()


def test_all_modes_report_and_write_completely(
    simulated: xr.Dataset, tmp_path: Path, tiny_fit: dict
) -> None:
    out = tmp_path / "report"
    report = evaluate_store(
        simulated,
        task="upsample",
        factor=4,
        methods=["linear", "cubic", "cst", "transformer", "paper"],
        fit_settings={**tiny_fit, "steps_per_epoch": 2, "max_epochs": 1},
        out_dir=out,
    )
    summary = report.summary()
    for key in ("cst_nmse", "transformer_nmse", "paper_nmse", "cst_vs_best_baseline"):
        assert np.isfinite(summary[key])
    assert summary["cst_vs_best_baseline"] == pytest.approx(
        summary["cst_nmse"] / summary["best_baseline_nmse"]
    )
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "traces.png"}
    assert (out / "traces.png").stat().st_size < 200_000
    again = EvaluationReport.read(out)
    assert again.summary() == pytest.approx(summary, nan_ok=True)
    assert json.loads((out / "report.json").read_text())["summary"]["cst_nmse"] == pytest.approx(
        summary["cst_nmse"]
    )
    assert "| cst (prior + fine-tune) |" in (out / "report.md").read_text()
    assert not list(tmp_path.glob(".report.*"))  # no temporaries left


def test_the_prior_variants_share_the_budget_of_trained_fits_only(
    simulated: xr.Dataset, tiny_fit: dict
) -> None:
    report = evaluate_store(
        simulated,
        task="upsample",
        factor=4,
        methods=["linear", "cst-zero-shot", "cst-scratch"],
        fit_settings=tiny_fit,
        max_minutes=1.0,
    )
    run = report.runs[0]
    assert run["cst-zero-shot"]["epochs"] == 0 and run["cst-scratch"]["epochs"] >= 1
    assert report.settings["minutes_per_fit"] == pytest.approx(0.8)  # one trained fit
    assert np.isfinite(run["cst-zero-shot"]["nmse"]) and np.isfinite(run["cst-scratch"]["nmse"])
    chosen = _resolve_methods(Task("upsample"), load_traces(simulated), None)
    assert "cst" in chosen and "cst-zero-shot" not in chosen  # variants run when named


def test_unknown_methods_and_grid_stores_are_refused(simulated: xr.Dataset) -> None:
    with pytest.raises(InputError, match="do not apply to task spatial"):
        evaluate_store(simulated, task="spatial", methods=["linear"])
    with pytest.raises(InputError, match="needs ROI traces"):
        grid = new_recording(
            {"grid": (("time", "y", "x"), np.zeros((40, 2, 2), np.float32))},
            time=np.arange(40) / 10.0,
            fs=10.0,
            source_format="test",
            source_name="grid-only",
        )
        evaluate_store(grid)
    assert "lowrank" not in available_methods(Task("upsample"), 5)


def test_real_allen_excerpt_upsampling_baselines(shared_data: Path) -> None:
    from cst_neuro.io import open_recording

    ds = open_recording(shared_data / "traces" / "allen_vc2p_552195520_excerpt_30Hz.mat", fs=30.0)
    report = evaluate_store(ds, task="upsample", factor=4, methods=["linear", "cubic", "lowrank"])
    s = report.summary()
    assert report.settings["rois"] == 74 and report.settings["frames"] == 6001
    assert 0 < s["linear_nmse"] < 1.5 and 0 < s["lowrank_nmse"] < 1.5


def test_spatial_without_positions_leaves_out_position_baselines(
    simulated: xr.Dataset, tiny_fit: dict
) -> None:
    blind = simulated.drop_vars(["roi_y", "roi_x"])
    report = evaluate_store(blind, task="spatial", fit_settings={**tiny_fit, "max_epochs": 1})
    assert np.isfinite(report.summary()["cst_nmse"])
    assert "nearest" not in report.methods and "ridge" in report.methods
    with pytest.raises(InputError, match="do not apply"):
        evaluate_store(blind, task="spatial", methods=["idw"])


def test_write_never_replaces_a_folder_that_is_not_a_report(
    simulated: xr.Dataset, tmp_path: Path
) -> None:
    from cst_neuro.errors import OutputError

    report = evaluate_store(simulated, methods=["linear"])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an evaluation report"):
        report.write(tmp_path / "data")
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"
