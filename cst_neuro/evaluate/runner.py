"""``evaluate_store``: every method of a task on one recording, over several seeds.

Per seed: a split (``tasks``), z-scoring with training-segment statistics, the methods of
the task's family looked up in the registry (``methods``: baselines with hyperparameters
chosen on validation targets; the model modes fitted through ``models.fit_model`` within a
share of the time budget), scores on the test targets (``metrics``). For upsampling also the
smoothness of dense reconstructions and an example stretch for the figure.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.atomic import check_output
from cst_neuro.errors import InputError
from cst_neuro.evaluate import metrics as mt
from cst_neuro.evaluate.methods import METHODS, MODEL, Forecasting, available_methods
from cst_neuro.evaluate.models import (
    DEFAULT_MODEL_METHODS,
    WINDOW,
    FittedModel,
    fit_model,
    trains,
)
from cst_neuro.evaluate.recording import Traces, load_traces, masked_recording
from cst_neuro.evaluate.report import REPORT, EvaluationReport
from cst_neuro.evaluate.tasks import Split, Task, forecast_origins, make_split, segments

log = logging.getLogger(__name__)

DEFAULT_MINUTES = 8.0  # whole-evaluation budget when none is given (fits in 10 minutes)
MODEL_SHARE = 0.8  # share of the budget for model training; the rest predicts and scores
DENSE = 8  # dense reconstructions: points per observed interval (smoothness, figures)
MAX_ORIGINS = 64


def evaluate_store(
    store: str | os.PathLike[str] | xr.Dataset,
    *,
    task: str = "upsample",
    factor: int = 4,
    methods: Sequence[str] | None = None,
    seeds: int = 1,
    max_minutes: float | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    fraction: float = 0.2,
    block: int = 1,
    horizon: int = 4,
    fit_settings: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """Evaluate methods on one recording's task; write the report to ``out_dir`` if given.

    ``max_minutes`` bounds the whole run (default 8): the model modes share 80% of it
    equally over modes and seeds. ``fraction``/``block`` set in-filling, ``horizon``
    forecasting; ``factor`` sets upsampling. ``fit_settings`` override FitConfig fields of
    the model fits (as a ``cst-neuro fit --config`` TOML would).
    """
    if out_dir is not None:
        check_output(out_dir, REPORT, overwrite=True)  # before any work; again when written
    traces = load_traces(store)
    spec = Task(task, factor=factor, fraction=fraction, block=block, horizon=horizon)
    report = evaluate_traces(
        traces,
        spec,
        methods=methods,
        seeds=seeds,
        max_minutes=max_minutes,
        fit_settings=fit_settings,
    )
    if out_dir is not None:
        report.write(out_dir)
    return report


SeedHook = Callable[["Seed", dict[str, Callable]], dict[str, dict[str, float]]]


def evaluate_traces(
    traces: Traces,
    spec: Task,
    *,
    methods: Sequence[str] | None = None,
    seeds: int = 1,
    max_minutes: float | None = None,
    on_seed: SeedHook | None = None,
    fit_settings: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """``evaluate_store`` on loaded traces; ``on_seed(seed, queries)`` adds metrics per seed.

    ``queries`` maps each method to its frames -> (Q, C) z-scored predictor (interpolation
    tasks), so extra analyses (spike timing) reuse the very models that were scored.
    """
    spec.check(traces.shape[0], traces.name)
    chosen = _resolve_methods(spec, traces, methods)
    if seeds < 1:
        raise InputError(None, f"seeds must be 1 or more, got {seeds}")
    budget = DEFAULT_MINUTES if max_minutes is None else float(max_minutes)
    n_fits = seeds * sum(METHODS[m].family == MODEL and trains(m) for m in chosen)
    per_fit = budget * MODEL_SHARE / max(n_fits, 1)
    start = time.perf_counter()
    runs, example = [], None
    for seed in range(seeds):
        fit = functools.partial(fit_model, minutes=per_fit, settings=fit_settings)
        scores, ex = _run_seed(traces, spec, chosen, seed, fit, on_seed)
        runs.append(scores)
        example = example or ex
    return EvaluationReport(
        dataset=traces.name,
        task=spec.name,
        label=spec.label,
        methods=list(chosen),
        runs=runs,
        settings={
            "factor": spec.factor,
            "fraction": spec.fraction,
            "block": spec.block,
            "horizon": spec.horizon,
            "seeds": seeds,
            "max_minutes": budget,
            "minutes_per_fit": round(per_fit, 3),
            "frames": traces.shape[0],
            "rois": traces.shape[1],
            "dropped_rois": traces.dropped_rois,
            "fs": traces.fs,
            "clean_truth": traces.clean is not None,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        example=example,
    )


def _resolve_methods(task: Task, traces: Traces, methods: Sequence[str] | None) -> list[str]:
    known = bool(np.ptp(traces.positions, axis=0).any()) if traces.shape[1] > 1 else False
    allowed = available_methods(task, traces.shape[1], known)
    if methods is None:  # the baselines and the modes; variants of cst when asked for
        return [m for m in allowed if METHODS[m].family != MODEL or m in DEFAULT_MODEL_METHODS]
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise InputError(
            traces.name,
            f"method(s) {', '.join(unknown)} do not apply to task {task.name} here; "
            f"choose from {', '.join(allowed)}",
        )
    return list(dict.fromkeys(methods))


class Seed:
    """One seed's split, z-scored data and scoring masks."""

    def __init__(self, traces: Traces, task: Task, seed: int) -> None:
        self.traces, self.task, self.seed = traces, task, seed
        finite = np.isfinite(traces.values)
        if task.kind.family == "forecast":
            seg = segments(traces.shape[0], seed)
            self.split = Split(finite, seg, finite & False, finite & False)
        else:
            self.split = make_split(task, *traces.shape, seed)
        train = self.split.train_observed & finite
        self.mean = np.nanmean(np.where(train, traces.values, np.nan), 0)
        sd = np.nanstd(np.where(train, traces.values, np.nan), 0)
        self.sd = np.where(sd > 0, sd, 1.0)
        self.z = (traces.values - self.mean) / self.sd
        self.observed = self.split.observed & finite
        self.val_mask = self.split.val_targets & finite
        self.test_mask = self.split.test_targets & finite
        self.variance = mt.roi_variance(self.z, self.split.test_frames)
        self.clean = None
        if traces.clean is not None:
            mapped = mt.affine_to(traces.clean, traces.values, self.observed)
            self.clean = (mapped - self.mean) / self.sd
            self.clean_variance = mt.roi_variance(self.clean, self.split.test_frames)

    def score(self, pred: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
        """NMSE, r (and NMSE against the clean truth) of a (T, C) z-scored prediction."""
        mask = self.test_mask if mask is None else mask
        out = {
            "nmse": mt.nmse(pred, self.z, mask, self.variance),
            "r": mt.pearson(pred, self.z, mask),
        }
        if self.clean is not None:
            out["clean_nmse"] = mt.nmse(pred, self.clean, mask, self.clean_variance)
        return out


def _run_seed(
    traces: Traces,
    task: Task,
    methods: list[str],
    seed: int,
    fit: Callable[..., FittedModel],
    on_seed: SeedHook | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    s = Seed(traces, task, seed)
    if task.kind.family == "forecast":
        return _forecast(s, methods, fit), None
    scores: dict[str, dict[str, float]] = {}
    dense: dict[str, Callable] = {}  # (frames, channels) -> (Q, C) z-scored
    for name in methods:
        start = time.perf_counter()
        method = METHODS[name]
        if method.family == MODEL:
            fitted = fit(traces, s.split, name, seed)
            pred, query = _model_predictions(s, fitted)
            scores[name] = {
                **s.score(pred),
                "seconds": time.perf_counter() - start,
                "fit_seconds": fitted.fit_seconds,
                "epochs": float(fitted.epochs),
            }
            dense[name] = query
            continue
        assert method.predict is not None  # every baseline registers a predictor
        if method.family == "spatial":
            pred = method.predict(s)
        else:
            pred, predict = method.predict(s)
            dense[name] = _with_columns(predict)
        scores[name] = {**s.score(pred), "seconds": time.perf_counter() - start}
    example = None
    if task.kind.dense:
        example = _smoothness(s, dense, scores)
    if on_seed is not None:
        for name, extra in on_seed(s, dense).items():
            scores[name].update(extra)
    return scores, (example if seed == 0 else None)


def _model_predictions(s: Seed, fitted: FittedModel) -> tuple[np.ndarray, Callable]:
    """Test predictions (T, C) of a fitted model, and its frames -> (Q, C) query."""
    t = s.traces

    def query(frames: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        times = t.time[0] + frames / t.fs
        raw = fitted.predict(times, channels)
        cols = slice(None) if channels is None else channels
        return (raw - s.mean[cols]) / s.sd[cols]

    rows = np.flatnonzero(s.test_mask.any(1))
    cols = np.flatnonzero(s.test_mask.any(0))
    pred = np.full_like(s.z, np.nan)
    pred[np.ix_(rows, cols)] = query(rows.astype(np.float64), cols)
    return pred, query


def _forecast(
    s: Seed, methods: list[str], fit: Callable[..., FittedModel]
) -> dict[str, dict[str, float]]:
    """Scores of forecasts h frames ahead from WINDOW frames of context, at test origins."""
    h, ctx = s.task.horizon, min(WINDOW, s.z.shape[0] // 4)
    seg = s.split.segment
    origins = forecast_origins(seg, h, ctx, MAX_ORIGINS)
    val_origins = forecast_origins(np.where(seg == 1, 2, 0), h, ctx, MAX_ORIGINS)
    z = np.nan_to_num(s.z)
    train = s.split.train_frames & np.isfinite(s.z).all(1)

    def windows(orig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hist = np.stack([z[o - ctx + 1 : o + 1] for o in orig])
        truth = np.stack([s.z[o + 1 : o + 1 + h] for o in orig])
        return hist, truth

    def score(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        p, t = pred.reshape(-1, z.shape[1]), truth.reshape(-1, z.shape[1])
        return {
            "nmse": mt.nmse(p, t, np.isfinite(t), s.variance),
            "r": mt.pearson(p, t, np.isfinite(t)),
        }

    hist, truth = windows(origins)
    vhist, vtruth = windows(val_origins)
    data = Forecasting(z, train, h, hist, vhist, vtruth, lambda p, t: score(p, t)["nmse"])
    scores: dict[str, dict[str, float]] = {}
    for name in methods:
        start, extra = time.perf_counter(), {}
        method = METHODS[name]
        if method.family == MODEL:
            fitted = fit(s.traces, s.split, name, s.seed)
            pred = _model_forecasts(s, fitted, origins, h)
            extra = {"fit_seconds": fitted.fit_seconds, "epochs": float(fitted.epochs)}
        else:
            assert method.predict is not None  # every baseline registers a predictor
            pred = method.predict(data)
        scores[name] = {**score(pred, truth), "seconds": time.perf_counter() - start, **extra}
    return scores


def _model_forecasts(s: Seed, fitted: FittedModel, origins: np.ndarray, h: int) -> np.ndarray:
    """(O, h, C) z-scored model forecasts, each from the recording cut at its origin."""
    t = s.traces
    inputs = masked_recording(t, np.isfinite(t.values))
    out = []
    for o in origins:
        rec = fitted.forecaster(inputs.isel(time=slice(0, o + 1)))
        raw = rec.predict(t.time[o + 1 : o + 1 + h])[..., 0]
        out.append((raw - s.mean) / s.sd)
    return np.stack(out)


def _smoothness(
    s: Seed, dense: dict[str, Callable], scores: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Smoothness of dense reconstructions over a test stretch; returns the figure's example.

    The stretch: up to 48 observed intervals at the start of the first test segment, for the
    (up to 8) ROIs most active in the training segments.
    """
    k = s.split.stride
    test = np.flatnonzero(s.split.test_frames)
    obs = np.flatnonzero(s.observed.all(1))
    obs = obs[(obs >= test[0]) & (obs <= test[0] + 48 * k)]
    activity = np.nanmax(np.where(s.split.train_observed, s.z, -np.inf), 0)
    rois = np.argsort(-activity)[:8]
    fine = np.arange(obs[0], obs[-1] + 1e-9, k / DENSE)
    h = 0.05 * k
    inner = obs[1:-1].astype(np.float64)
    example: dict[str, Any] = {
        "roi": int(rois[0]),
        "time": (s.traces.time[0] + fine / s.traces.fs).tolist(),
        "truth_time": s.traces.time[obs[0] : obs[-1] + 1].tolist(),
        "truth": s.traces.values[obs[0] : obs[-1] + 1, rois[0]].tolist(),
        "observed_time": s.traces.time[obs].tolist(),
        "observed": s.traces.values[obs, rois[0]].tolist(),
        "methods": {},
    }
    for method, query in dense.items():
        f = query(fine, rois)
        left, centre, right = (query(inner + d, rois) for d in (-h, 0, h))
        scores[method]["smooth_d2"] = mt.smoothness(f, 1.0 / DENSE, 1.0)
        scores[method]["slope_jump"] = mt.slope_jump(left, centre, right, h / k, 1.0)
        example["methods"][method] = (f[:, 0] * s.sd[rois[0]] + s.mean[rois[0]]).tolist()
    return example


def _with_columns(predict: Callable) -> Callable:
    """frames -> (Q, C) made frames, columns -> (Q, len(columns)), like a model's query."""

    def query(frames: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        out = predict(frames)
        return out if channels is None else out[:, channels]

    return query
