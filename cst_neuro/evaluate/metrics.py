"""Scores of a prediction: NMSE per ROI, Pearson r, smoothness of dense reconstructions.

NMSE of a ROI is the mean squared error over its scored samples divided by the ROI's
variance (over the test segments, so a flat stretch does not inflate it), then averaged
over ROIs: 1.0 is the skill of predicting the ROI's mean, 0 is perfect. It is invariant to
any per-ROI affine change of units applied to truth and prediction alike.
"""

from __future__ import annotations

import numpy as np


def nmse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, variance: np.ndarray) -> float:
    """Mean over ROIs of MSE over ``mask`` (T, C) ÷ ``variance`` (C,); ROIs without targets skip."""
    per_roi = nmse_per_roi(pred, truth, mask, variance)
    return float(np.nanmean(per_roi)) if np.isfinite(per_roi).any() else float("nan")


def nmse_per_roi(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, variance: np.ndarray
) -> np.ndarray:
    """(C,) MSE over each ROI's masked samples ÷ its variance; NaN where nothing is scored."""
    mask = mask & np.isfinite(truth)
    err = np.where(mask, (np.nan_to_num(pred) - np.nan_to_num(truth)) ** 2, 0.0)
    count = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = err.sum(0) / count
        out = mse / variance
    return np.where((count > 0) & (variance > 0), out, np.nan)


def pearson(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean over ROIs of the correlation between prediction and truth on ``mask``."""
    rs = []
    for c in range(truth.shape[1]):
        m = mask[:, c] & np.isfinite(truth[:, c])
        if m.sum() < 3:
            continue
        a, b = pred[m, c], truth[m, c]
        if np.std(a) == 0 or np.std(b) == 0:
            rs.append(0.0)
            continue
        rs.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(rs)) if rs else float("nan")


def roi_variance(truth: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(C,) variance of each ROI over the given frames (NaN-aware)."""
    return np.nanvar(truth[frames], axis=0)


def affine_to(clean: np.ndarray, noisy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``clean`` mapped per ROI by the affine fit a·clean + b ≈ noisy over ``mask``.

    The simulator's clean ΔF/F and the measured one differ by a per-ROI baseline and gain;
    fitting them on observed samples only puts the clean truth in measured units.
    """
    out = np.empty_like(clean, dtype=np.float64)
    for c in range(clean.shape[1]):
        m = mask[:, c] & np.isfinite(noisy[:, c])
        design = np.column_stack([clean[m, c], np.ones(m.sum())])
        coef = np.linalg.lstsq(design, noisy[m, c], rcond=None)[0]
        out[:, c] = clean[:, c] * coef[0] + coef[1]
    return out


def smoothness(dense: np.ndarray, step: float, scale: np.ndarray | float) -> float:
    """Energy of the second derivative of a dense reconstruction (T', C) sampled every ``step``.

    Mean of (f'' · Δ²)² over time and ROIs, with Δ the observed frame interval and f in units
    of each ROI's sd (``scale``): dimensionless, comparable across methods and recordings.
    ``step`` is in units of Δ.
    """
    d2 = (dense[2:] - 2 * dense[1:-1] + dense[:-2]) / step**2
    return float(np.mean((d2 / scale) ** 2))


def slope_jump(left: np.ndarray, centre: np.ndarray, right: np.ndarray, h: float, scale) -> float:
    """Mean |f'(t+) - f'(t-)| at observed samples, from values at t-h, t, t+h (h in units of Δ).

    Linear interpolation has a kink at every sample; a smooth reconstruction has none.
    """
    jump = np.abs((right - centre) / h - (centre - left) / h)
    return float(np.mean(jump / scale))
