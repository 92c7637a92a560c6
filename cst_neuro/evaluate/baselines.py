"""Classic baselines that a neuroscientist would otherwise use, and the yardsticks.

Temporal interpolators fill values between observed frames of each ROI: hold-last,
linear, PCHIP, natural cubic spline, a windowed Gaussian process, and the low-rank
population yardstick (PCA across ROIs denoises the observed frames, then linear
interpolation); ``INTERPOLATORS`` maps their names to them. Spatial predictors guess hidden
ROIs from the others (inverse-distance weighting of the nearest ROIs, ridge regression);
forecasters are persistence, per-ROI AR(p) and ridge VAR(1). The evaluation's registry of
methods by name, with how each is run and chosen, is ``cst_neuro.evaluate.methods``.

Everything works on z-scored traces (per-ROI mean and sd from the training segments) and
in frame units of time. Hyperparameters (GP length scale and noise, PCA rank, ridge
strength, AR order) are chosen by the caller on validation targets through ``GRIDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator

GP_NEIGHBOURS = 16  # observed samples each GP prediction conditions on
LOW_RANK_MIN_ROIS = 10  # the population yardstick needs a population


def hold_last(t_obs: np.ndarray, y_obs: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Zero-order hold: the last observed value at or before each time (the first before it)."""
    idx = np.clip(np.searchsorted(t_obs, t_new, side="right") - 1, 0, t_obs.size - 1)
    return y_obs[idx]


def linear(t_obs: np.ndarray, y_obs: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of every column, constant beyond the ends."""
    hi = np.clip(np.searchsorted(t_obs, t_new, side="right"), 1, t_obs.size - 1)
    lo = hi - 1
    w = np.clip((t_new - t_obs[lo]) / (t_obs[hi] - t_obs[lo]), 0.0, 1.0)[:, None]
    return (1 - w) * y_obs[lo] + w * y_obs[hi]


def pchip(t_obs: np.ndarray, y_obs: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Shape-preserving piecewise cubic (no overshoot at transients)."""
    return PchipInterpolator(t_obs, y_obs, axis=0, extrapolate=True)(t_new)


def cubic(t_obs: np.ndarray, y_obs: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Natural cubic spline through every observed sample."""
    return CubicSpline(t_obs, y_obs, axis=0, bc_type="natural")(t_new)


def gp(
    t_obs: np.ndarray,
    y_obs: np.ndarray,
    t_new: np.ndarray,
    *,
    length: float = 2.0,
    noise: float = 0.1,
) -> np.ndarray:
    """Windowed GP regression: squared-exponential kernel on the nearest observed samples.

    Prior mean 0 and variance 1 (the traces are z-scored); ``length`` in units of the
    median observed interval, ``noise`` the noise variance relative to the signal's.
    Each time conditions on its ``GP_NEIGHBOURS`` nearest samples, so the cost is linear
    in the length of the recording.
    """
    m = min(GP_NEIGHBOURS, t_obs.size)
    ell = length * float(np.median(np.diff(t_obs))) if t_obs.size > 1 else 1.0
    start = np.clip(np.searchsorted(t_obs, t_new) - m // 2, 0, t_obs.size - m)
    nbr = start[:, None] + np.arange(m)  # (Q, m)
    tn = t_obs[nbr]
    K = np.exp(-0.5 * ((tn[:, :, None] - tn[:, None, :]) / ell) ** 2) + noise * np.eye(m)
    k_star = np.exp(-0.5 * ((t_new[:, None] - tn) / ell) ** 2)  # (Q, m)
    w = np.linalg.solve(K, k_star[..., None])[..., 0]  # (Q, m)
    return np.einsum("qm,qmc->qc", w, y_obs[nbr])


def low_rank(
    t_obs: np.ndarray,
    y_obs: np.ndarray,
    t_new: np.ndarray,
    *,
    components: np.ndarray,
    rank: int = 5,
) -> np.ndarray:
    """Observed frames projected on the first ``rank`` principal components, then linear.

    ``components`` (C, C') are PCA directions fitted on training frames only.
    """
    basis = components[:, :rank]
    return linear(t_obs, (y_obs @ basis) @ basis.T, t_new)


def pca_components(y_train: np.ndarray) -> np.ndarray:
    """(C, min(T, C)) principal directions of z-scored training frames (T, C)."""
    _, _, vt = np.linalg.svd(y_train, full_matrices=False)
    return vt.T


INTERPOLATORS: dict[str, Callable[..., np.ndarray]] = {
    "hold": hold_last,
    "linear": linear,
    "pchip": pchip,
    "cubic": cubic,
    "gp": gp,
    "lowrank": low_rank,
}
CLASSIC = ("hold", "linear", "pchip", "cubic", "gp")  # the per-ROI classics

GRIDS: dict[str, list[dict[str, Any]]] = {
    "gp": [
        {"length": ell, "noise": s} for ell in (0.5, 1.0, 2.0, 4.0) for s in (0.01, 0.1, 0.3, 1.0)
    ],
    "lowrank": [{"rank": r} for r in (1, 2, 5, 10, 20, 40)],
    "ridge": [{"alpha": a} for a in (0.1, 1.0, 10.0, 100.0, 1000.0)],
    "ar": [{"order": p} for p in (1, 2, 4, 8)],
    "var": [{"alpha": a} for a in (0.1, 1.0, 10.0, 100.0, 1000.0)],
}


# ---- spatial: hidden ROIs from the others ------------------------------------------------


def nearest_roi(
    z: np.ndarray, seen: np.ndarray, positions: np.ndarray, hidden: np.ndarray
) -> np.ndarray:
    """(T, H) each hidden ROI's trace guessed as its spatially nearest seen ROI's."""
    return idw(z, seen, positions, hidden, k=1)


def idw(
    z: np.ndarray, seen: np.ndarray, positions: np.ndarray, hidden: np.ndarray, *, k: int = 8
) -> np.ndarray:
    """(T, H) inverse-distance-weighted mean of the k nearest seen ROIs (z-scored)."""
    src = np.flatnonzero(seen)
    out = np.empty((z.shape[0], hidden.size))
    for j, h in enumerate(hidden):
        d = np.linalg.norm(positions[src] - positions[h], axis=1)
        near = np.argsort(d)[: min(k, src.size)]
        w = 1.0 / np.maximum(d[near], 1e-6)
        out[:, j] = z[:, src[near]] @ (w / w.sum())
    return out


def ridge(
    x_train: np.ndarray, y_train: np.ndarray, x_new: np.ndarray, *, alpha: float = 10.0
) -> np.ndarray:
    """Ridge regression y ≈ x W (+ intercept) fitted on training rows, applied to x_new."""
    xm, ym = x_train.mean(0), y_train.mean(0)
    xc = x_train - xm
    gram = xc.T @ xc + alpha * np.eye(xc.shape[1])
    w = np.linalg.solve(gram, xc.T @ (y_train - ym))
    return (x_new - xm) @ w + ym


# ---- forecasting -------------------------------------------------------------------------


def persistence(history: np.ndarray, horizon: int) -> np.ndarray:
    """(O, h, C) the last context frame repeated; ``history`` is (O, L, C)."""
    return np.repeat(history[:, -1:], horizon, axis=1)


def fit_ar(z: np.ndarray, frames: np.ndarray, order: int) -> np.ndarray:
    """Per-ROI AR(p) coefficients (C, p + 1) by least squares on runs inside ``frames``."""
    rows = _lagged_rows(frames, order)
    coef = np.empty((z.shape[1], order + 1))
    for c in range(z.shape[1]):
        lags = np.stack([z[rows - k, c] for k in range(1, order + 1)], axis=1)
        design = np.column_stack([lags, np.ones(rows.size)])
        coef[c] = np.linalg.lstsq(design, z[rows, c], rcond=None)[0]
    return coef


def ar_forecast(history: np.ndarray, horizon: int, coef: np.ndarray) -> np.ndarray:
    """(O, h, C) iterated AR(p) forecasts from (O, L, C) contexts."""
    order = coef.shape[1] - 1
    buf = list(np.moveaxis(history[:, -order:], 1, 0))  # p arrays (O, C), oldest first
    out = []
    for _ in range(horizon):
        nxt = coef[:, -1] + sum(coef[:, k - 1] * buf[-k] for k in range(1, order + 1))
        out.append(nxt)
        buf.append(nxt)
    return np.stack(out, axis=1)


def fit_var(z: np.ndarray, frames: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge VAR(1) x_{t+1} ≈ x_t A + b on consecutive training frames: (A, b)."""
    rows = _lagged_rows(frames, 1)
    x, y = z[rows - 1], z[rows]
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    a = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return a, ym - xm @ a


def var_forecast(
    history: np.ndarray, horizon: int, params: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """(O, h, C) iterated ridge-VAR(1) forecasts from (O, L, C) contexts."""
    a, b = params
    x, out = history[:, -1], []
    for _ in range(horizon):
        x = x @ a + b
        out.append(x)
    return np.stack(out, axis=1)


def _lagged_rows(frames: np.ndarray, order: int) -> np.ndarray:
    """Frames t in ``frames`` whose p predecessors are all in ``frames`` too."""
    ok = frames.copy()
    for k in range(1, order + 1):
        ok[k:] &= frames[:-k]
    ok[:order] = False
    return np.flatnonzero(ok)
