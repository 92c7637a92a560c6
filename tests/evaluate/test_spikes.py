"""Spike-timing harness: onset detection on known transients and the real ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cst_neuro.errors import InputError
from cst_neuro.evaluate import spikes


def transient(t: np.ndarray, spike: float, rise: float = 0.01, decay: float = 0.2) -> np.ndarray:
    s = np.clip(t - spike, 0, None)
    return (1 - np.exp(-s / rise)) * np.exp(-s / decay)


def test_onset_of_a_clean_transient_is_just_after_the_spike() -> None:
    t = np.arange(0, 2, 0.001)
    y = transient(t, 1.0)
    onset = spikes.onset_time(t, y, 1.0)
    assert 0 < onset - 1.0 < 0.015  # half-rise of a 10 ms rise
    assert np.isnan(spikes.onset_time(t, np.zeros_like(t), 1.0))


def test_linear_reconstruction_from_decimated_frames_blurs_onsets() -> None:
    fs = 100.0
    t = np.arange(0, 30, 1 / fs)
    spike_times = np.arange(1.0, 29.0, 1.1) + 0.0037
    y = sum(transient(t, s) for s in spike_times)
    full = spikes.onset_errors(lambda q: np.interp(q, t, y), spike_times, fs)
    coarse = spikes.onset_errors(lambda q: np.interp(q, t[::4], y[::4]), spike_times, fs)
    assert np.nanmean(np.abs(full)) < np.nanmean(np.abs(coarse))
    summary = spikes.summarise(coarse)
    assert summary["onsets"] == spike_times.size and summary["onset_mae_ms"] > 0


def test_burst_onsets_need_a_quiet_period() -> None:
    s = np.array([0.1, 0.2, 1.0, 1.05, 3.0])
    np.testing.assert_array_equal(spikes.burst_onsets(s, quiet=0.5), [0.1, 1.0, 3.0])


def test_real_ground_truth_loads_with_spikes_in_the_calcium_clock(shared_data: Path) -> None:
    path = shared_data / "ground_truth" / "DS09_GCaMP6f_m_V1_cell5C.mat"
    cells = spikes.load_ground_truth(path)
    assert len(cells) == 5
    cell = cells[0]
    t = cell.recording["time"].values
    assert cell.recording.sizes == {"time": 14400, "roi": 1}
    assert abs(cell.recording.attrs["fs"] - 60.06) < 0.01
    assert t[0] <= cell.spikes.min() and cell.spikes.max() <= t[-1]
    ref = spikes.reference_errors(cell, np.ones(t.size, bool))
    assert ref["onsets"] > 0 and 0 < ref["onset_mae_ms"] < 300  # GCaMP6f: slow, noisy onsets


def test_not_a_ground_truth_file(tmp_path: Path) -> None:
    import scipy.io

    scipy.io.savemat(tmp_path / "x.mat", {"a": np.zeros(3)})
    with pytest.raises(InputError, match="CAttached"):
        spikes.load_ground_truth(tmp_path / "x.mat")
