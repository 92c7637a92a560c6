"""Sub-frame timing on ground truth: do reconstructed transients start at the true spikes?

The CASCADE ground-truth files hold calcium (ΔF/F) recorded together with electrical
spike times (cell-attached). The calcium is decimated (every k-th frame observed, the
upsampling task), every method reconstructs it at sub-frame resolution, and the onset of
each transient is located in the reconstruction: the first upward crossing of half-way
from the pre-spike baseline to the peak. Its distance to the true spike time is the error
(ms). Only burst onsets count (spikes with ``QUIET`` s without a spike before them), only
in the test segments, so every method is scored on samples that no choice has seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.evaluate.recording import traces_recording
from cst_neuro.io.mat5 import load_mat

QUIET = 0.5  # s without a spike before a burst onset
BASELINE = (-0.3, -0.02)  # s around the spike: pre-spike baseline window
PEAK = (0.0, 0.4)  # s after the spike: where the transient peaks
SEARCH = -0.15  # s: the onset search starts this long before the spike
DENSE_PER_FRAME = 4  # onset search grid: points per full-rate frame


@dataclass
class GroundTruth:
    """One cell: its calcium as a Recording and its spike times (s, same clock)."""

    name: str
    recording: xr.Dataset
    spikes: np.ndarray


def is_ground_truth(path: str | Path) -> bool:
    """Whether ``path`` is a CASCADE ground-truth ``.mat`` (a struct array ``CAttached``)."""
    path = Path(path)
    if path.suffix.lower() != ".mat" or not path.is_file():
        return False
    import scipy.io

    try:
        return any(name == "CAttached" for name, *_ in scipy.io.whosmat(path))
    except (OSError, ValueError, NotImplementedError):
        return False


def load_ground_truth(path: str | Path) -> list[GroundTruth]:
    """Every recording in a CASCADE ground-truth ``.mat`` (struct array ``CAttached``)."""
    path = Path(path)
    raw = load_mat(path, squeeze_me=True, struct_as_record=False)
    if "CAttached" not in raw:
        raise InputError(path, "no CAttached struct: not a CASCADE ground-truth file")
    out = []
    for i, entry in enumerate(np.atleast_1d(raw["CAttached"])):
        try:
            t = np.asarray(entry.fluo_time, np.float64).ravel()
            dff = np.asarray(entry.fluo_mean, np.float64).ravel()
            spikes = np.sort(np.atleast_1d(np.asarray(entry.events_AP, np.float64)) * 1e-4)
        except AttributeError as e:
            raise InputError(path, f"recording {i} lacks fluo_time/fluo_mean/events_AP") from e
        fs = (t.size - 1) / (t[-1] - t[0])
        name = f"{path.stem}#{i + 1}"
        ds = traces_recording(dff[:, None], fs=fs, name=name, time=t[0] + np.arange(t.size) / fs)
        out.append(GroundTruth(name, ds, spikes))
    return out


def burst_onsets(spikes: np.ndarray, quiet: float = QUIET) -> np.ndarray:
    """Spikes with no other spike in the ``quiet`` seconds before them."""
    gaps = np.diff(np.concatenate([[-np.inf], spikes]))
    return spikes[gaps >= quiet]


def onset_time(t: np.ndarray, y: np.ndarray, spike: float) -> float:
    """Half-rise crossing time of the transient after ``spike`` in a dense trace; NaN if none."""
    base = y[(t >= spike + BASELINE[0]) & (t <= spike + BASELINE[1])]
    peak = y[(t >= spike + PEAK[0]) & (t <= spike + PEAK[1])]
    if base.size == 0 or peak.size == 0:
        return float("nan")
    level = float(np.mean(base))
    amplitude = float(np.max(peak)) - level
    if amplitude <= 0:
        return float("nan")
    thr = level + 0.5 * amplitude
    idx = np.flatnonzero((t >= spike + SEARCH) & (t <= spike + PEAK[1]))
    for i in idx[1:]:
        if y[i] >= thr > y[i - 1]:
            return float(t[i - 1] + (thr - y[i - 1]) / (y[i] - y[i - 1]) * (t[i] - t[i - 1]))
    return float("nan")


def onset_errors(
    reconstruct: Callable[[np.ndarray], np.ndarray], spikes: np.ndarray, fs: float
) -> np.ndarray:
    """Onset minus spike time (s) per spike; ``reconstruct(times) -> values`` is any method."""
    step = 1.0 / (fs * DENSE_PER_FRAME)
    out = []
    for s in spikes:
        t = s + np.arange(BASELINE[0] - step, PEAK[1] + step, step)
        out.append(onset_time(t, reconstruct(t), s) - s)
    return np.asarray(out)


def summarise(errors: np.ndarray) -> dict[str, float]:
    """Mean absolute error and sd of onset errors (ms) and how many onsets were found."""
    ok = errors[np.isfinite(errors)]
    if ok.size == 0:
        return {"onset_mae_ms": float("nan"), "onset_sd_ms": float("nan"), "onsets": 0.0}
    return {
        "onset_mae_ms": float(np.mean(np.abs(ok)) * 1e3),
        "onset_sd_ms": float(np.std(ok) * 1e3),
        "onsets": float(ok.size),
    }


def timing_hook(spikes: np.ndarray) -> Callable[[Any, dict[str, Callable]], dict]:
    """An ``evaluate_traces`` hook scoring onset timing of every method on test-segment bursts.

    Times are converted to fractional frames of the recording, the methods' query unit.
    """

    def hook(seed: Any, queries: dict[str, Callable]) -> dict[str, dict[str, float]]:
        traces, split = seed.traces, seed.split
        t0, fs = traces.time[0], traces.fs
        frames = np.clip(np.round((burst_onsets(spikes) - t0) * fs).astype(int), 0, None)
        keep = frames < traces.shape[0]
        onsets = burst_onsets(spikes)[keep]
        test = split.test_frames[frames[keep]]
        margin = (onsets + BASELINE[0] > t0) & (onsets + PEAK[1] < traces.time[-1])
        chosen = onsets[test & margin]
        out = {}
        for method, query in queries.items():

            def values(t: np.ndarray, q: Callable = query) -> np.ndarray:
                return q((t - t0) * fs, np.array([0]))[:, 0]

            out[method] = summarise(onset_errors(values, chosen, fs))
        return out

    return hook


def reference_errors(gt: GroundTruth, test_frames: np.ndarray) -> dict[str, float]:
    """Onset errors on the full-rate calcium itself (no decimation): the detector's floor."""
    t = gt.recording["time"].values
    y = np.asarray(gt.recording["dff"].values[:, 0], np.float64)
    fs = float(gt.recording.attrs["fs"])
    onsets = burst_onsets(gt.spikes)
    frames = np.round((onsets - t[0]) * fs).astype(int)
    ok = (frames >= 0) & (frames < t.size)
    onsets, frames = onsets[ok], frames[ok]
    chosen = onsets[test_frames[frames]]
    return summarise(onset_errors(lambda q: np.interp(q, t, y), chosen, fs))
