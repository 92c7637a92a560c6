"""The registry of evaluation methods: what predicts the held-out samples of each task.

Every method is a ``Method`` in ``METHODS``: its name, the task family it serves
(``interpolate`` for upsampling and in-filling, ``spatial``, ``forecast``, or ``model`` for
the CST modes, which serve every task), what it needs (a population of ROIs, known ROI
positions) and its predictor, whose arguments depend on the family:

- ``interpolate``: ``predict(seed)`` -> (test predictions (T, C), frames -> (Q, C) query),
  hyperparameters chosen on the validation targets through ``baselines.GRIDS``;
- ``spatial``: ``predict(seed)`` -> test predictions (T, C) of the hidden ROIs;
- ``forecast``: ``predict(forecasting)`` -> (O, h, C) forecasts (``Forecasting``);
- ``model``: no predictor here: the runner fits every mode through one entry,
  ``cst_neuro.evaluate.models.fit_model``.

``available_methods`` lists the registered methods that apply to a task, in registration
order (the order of report tables); adding a baseline is one ``register`` call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cst_neuro.evaluate import baselines as bl
from cst_neuro.evaluate import metrics as mt
from cst_neuro.evaluate.models import MODEL_METHODS
from cst_neuro.evaluate.tasks import Task

if TYPE_CHECKING:
    from cst_neuro.evaluate.runner import Seed

MODEL = "model"


@dataclass(frozen=True)
class Method:
    """One evaluation method (see the module docstring for ``family`` and ``predict``)."""

    name: str
    family: str
    predict: Callable[..., Any] | None
    min_rois: int = 1  # the population yardstick needs a population
    needs_positions: bool = False  # spatial neighbours need ROI positions

    def applies(self, task: Task, n_rois: int, positions: bool) -> bool:
        """Whether this method can run ``task`` on ``n_rois`` ROIs (``positions`` known)."""
        return (
            self.family in (task.kind.family, MODEL)
            and n_rois >= self.min_rois
            and (positions or not self.needs_positions)
        )


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (the order of registration is the order of tables)."""
    METHODS[method.name] = method
    return method


def available_methods(task: Task, n_rois: int, positions: bool = True) -> tuple[str, ...]:
    """The methods that apply to ``task`` on ``n_rois`` ROIs (with known ``positions`` or not)."""
    return tuple(name for name, m in METHODS.items() if m.applies(task, n_rois, positions))


# ---- interpolation: values between observed frames ------------------------------------


def _groups(observed: np.ndarray) -> list[np.ndarray]:
    """Columns grouped by identical observed-frame patterns (usually one group)."""
    keys: dict[bytes, list[int]] = {}
    for c in range(observed.shape[1]):
        keys.setdefault(np.packbits(observed[:, c]).tobytes(), []).append(c)
    return [np.asarray(v) for v in keys.values()]


def _interpolator(s: Seed, method: str, params: dict[str, Any]) -> Callable:
    """frames (Q,) -> (Q, C) z-scored predictions of one interpolator with ``params``."""
    fn = bl.INTERPOLATORS[method]
    if method == "lowrank":
        rows = (s.split.train_observed & np.isfinite(s.z)).all(1)
        params = {**params, "components": bl.pca_components(s.z[rows])}
    groups = _groups(s.observed)

    def predict(frames: np.ndarray) -> np.ndarray:
        out = np.full((frames.size, s.z.shape[1]), np.nan)
        for cols in groups:
            t_obs = np.flatnonzero(s.observed[:, cols[0]])
            if t_obs.size < 2:
                continue
            if method == "lowrank":  # projects across all ROIs: needs the shared frames
                t_obs = np.flatnonzero(s.observed.all(1))
                out[:, cols] = fn(t_obs, s.z[t_obs], frames, **params)[:, cols]
            else:
                out[:, cols] = fn(t_obs, s.z[np.ix_(t_obs, cols)], frames, **params)
        return out

    return predict


def interpolate(s: Seed, *, method: str) -> tuple[np.ndarray, Callable]:
    """Test predictions (T, C) of an interpolator, its grid choice made on validation."""
    grid = bl.GRIDS.get(method, [{}])
    if method == "lowrank":
        n_rank = min(int((s.split.train_observed.all(1)).sum()), s.z.shape[1])
        grid = [g for g in grid if g["rank"] < n_rank] or [{"rank": 1}]
    best, best_score = grid[0], np.inf
    if len(grid) > 1:
        rows = np.flatnonzero(s.val_mask.any(1))
        for params in grid:
            pred = np.full_like(s.z, np.nan)
            pred[rows] = _interpolator(s, method, params)(rows.astype(np.float64))
            score = mt.nmse(pred, s.z, s.val_mask, mt.roi_variance(s.z, s.split.segment == 1))
            if score < best_score:
                best, best_score = params, score
    predict = _interpolator(s, method, best)
    rows = np.flatnonzero(s.test_mask.any(1))
    pred = np.full_like(s.z, np.nan)
    pred[rows] = predict(rows.astype(np.float64))
    return pred, predict


# ---- spatial: hidden ROIs from the seen ones ------------------------------------------


def _hidden_and_seen(s: Seed) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.flatnonzero((s.split.val_targets | s.split.test_targets).any(0))
    seen = np.ones(s.z.shape[1], bool)
    seen[hidden] = False
    return hidden, seen


def spatial_mean(s: Seed) -> np.ndarray:
    """Hidden ROIs at their training mean (0 in z-units)."""
    hidden, _ = _hidden_and_seen(s)
    pred = np.full_like(s.z, np.nan)
    pred[:, hidden] = 0.0
    return pred


def spatial_idw(s: Seed, *, k: int) -> np.ndarray:
    """Hidden ROIs as the inverse-distance-weighted mean of their ``k`` nearest seen ROIs."""
    hidden, seen = _hidden_and_seen(s)
    pred = np.full_like(s.z, np.nan)
    pred[:, hidden] = bl.idw(np.nan_to_num(s.z), seen, s.traces.positions, hidden, k=k)
    return pred


def spatial_ridge(s: Seed) -> np.ndarray:
    """Hidden ROIs by ridge regression on the seen ones, strength chosen on validation."""
    hidden, seen = _hidden_and_seen(s)
    z = np.nan_to_num(s.z)
    train = s.split.train_frames
    val_var = mt.roi_variance(s.z, s.split.segment == 1)
    best, best_score = np.full_like(s.z, np.nan), np.inf
    for params in bl.GRIDS["ridge"]:
        guess = np.full_like(s.z, np.nan)
        guess[:, hidden] = bl.ridge(z[train][:, seen], z[train][:, hidden], z[:, seen], **params)
        score = mt.nmse(guess, s.z, s.val_mask, val_var)
        if score < best_score:
            best, best_score = guess, score
    return best


# ---- forecasting: the next frames from a context --------------------------------------


@dataclass
class Forecasting:
    """What a forecaster reads: z-scored data, training frames, test and validation contexts.

    ``history`` (O, L, C) are the contexts at the test origins; ``val_history`` and
    ``val_truth`` those at validation origins and what followed, for choosing
    hyperparameters (``val_nmse``).
    """

    z: np.ndarray  # (T, C) z-scored, NaN as 0
    train: np.ndarray  # (T,) training frames where every ROI is finite
    horizon: int
    history: np.ndarray
    val_history: np.ndarray
    val_truth: np.ndarray
    val_nmse: Callable[[np.ndarray, np.ndarray], float]


def persistence(f: Forecasting) -> np.ndarray:
    """The last context frame, repeated."""
    return bl.persistence(f.history, f.horizon)


def autoregression(
    f: Forecasting, *, fit: Callable[..., Any], run: Callable[..., np.ndarray], grid: str
) -> np.ndarray:
    """A linear forecaster fitted on training frames per setting of ``GRIDS[grid]``, the
    setting chosen on validation origins (``fit``/``run``: ``fit_ar``/``ar_forecast`` or
    ``fit_var``/``var_forecast``)."""
    fits = [fit(f.z, f.train, *p.values()) for p in bl.GRIDS[grid]]
    val = [f.val_nmse(run(f.val_history, f.horizon, params), f.val_truth) for params in fits]
    return run(f.history, f.horizon, fits[int(np.nanargmin(val))])


for _name in bl.INTERPOLATORS:
    register(
        Method(
            _name,
            "interpolate",
            functools.partial(interpolate, method=_name),
            min_rois=bl.LOW_RANK_MIN_ROIS if _name == "lowrank" else 1,
        )
    )
register(Method("mean", "spatial", spatial_mean))
register(Method("nearest", "spatial", functools.partial(spatial_idw, k=1), needs_positions=True))
register(Method("idw", "spatial", functools.partial(spatial_idw, k=8), needs_positions=True))
register(Method("ridge", "spatial", spatial_ridge))
register(Method("persistence", "forecast", persistence))
register(
    Method("ar", "forecast", functools.partial(autoregression, fit=bl.fit_ar, run=bl.ar_forecast,
                                               grid="ar"))
)  # fmt: skip
register(
    Method("var", "forecast", functools.partial(autoregression, fit=bl.fit_var,
                                                run=bl.var_forecast, grid="var"))
)  # fmt: skip
for _name in MODEL_METHODS:
    register(Method(_name, MODEL, None))
