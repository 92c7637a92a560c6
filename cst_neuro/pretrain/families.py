"""Synthetic calcium recordings drawn from wide families, for pretraining the prior.

One draw is a whole recording: its acquisition rate, indicator kinetics, firing, population
structure, drift, neuropil and noise are drawn first (`Family`), then the traces. The
ranges cover what two-photon labs record and more:

- rate 4-200 Hz; indicators from GCaMP8/jGCaMP8-like (rise ~1-5 ms, decay ~0.1 s) through
  GCaMP6f/6s and jRGECO1a-like (decay 0.5-1 s) to OGB-1-like and slower (decay to 2.5 s),
  with saturation in some recordings;
- firing 0.02-8 Hz per cell, modulated by a shared drive (independent to strongly
  correlated populations), in bursts, with silent ROIs, and in some recordings one burst
  larger than anything before it;
- per-spike amplitude over per-sample noise from 0.25 (noise-dominated) to 40 (clean),
  shot noise that grows with the signal, temporally correlated noise, a slow baseline,
  neuropil-like shared contamination.

Calcium is exact at every sample time: spikes fall at real times and each exponential of
the difference-of-exponentials kernel is carried by its exact recurrence (as in
`cst_neuro.simulate.dynamics`). ``target`` is the recording minus its white noise: what a
perfect model could predict at a time it did not observe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.signal import lfilter

MAX_RATE = 40.0  # Hz: a cell's firing rate at any moment, at most


@dataclass(frozen=True)
class SyntheticRecording:
    """A recording at its acquisition rate, with what is predictable about it."""

    noisy: np.ndarray  # (T, C) ΔF/F as recorded
    target: np.ndarray  # (T, C) noisy minus its white noise
    fs: float  # Hz
    positions: np.ndarray  # (C, 2) y, x in field-of-view units
    family: dict[str, Any] = field(default_factory=dict)


def _log_uniform(rng: np.random.Generator, low: float, high: float, size: Any = None) -> Any:
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def _smooth(rng: np.random.Generator, n: int, timescale: float, fs: float, cols: int) -> np.ndarray:
    """(n, cols) unit-variance Ornstein-Uhlenbeck processes with the given timescale (s)."""
    a = np.exp(-1.0 / (fs * max(timescale, 1e-3)))
    noise = rng.standard_normal((n, cols)) * np.sqrt(1 - a * a)
    start = rng.standard_normal((1, cols))
    out, _ = lfilter([1.0], [1.0, -a], noise, axis=0, zi=a * start)
    return out


def _calcium(
    spike_times: list[np.ndarray], n: int, fs: float, tau_rise: float, tau_decay: float
) -> np.ndarray:
    """(n, C) unit-peak difference-of-exponentials responses, exact at t_i = i / fs."""
    peak_t = tau_rise * tau_decay / (tau_decay - tau_rise) * np.log(tau_decay / tau_rise)
    peak = np.exp(-peak_t / tau_decay) - np.exp(-peak_t / tau_rise)
    out = np.zeros((n, len(spike_times)))
    for c, times in enumerate(spike_times):
        if times.size == 0:
            continue
        frame = np.clip(np.ceil(times * fs).astype(np.int64), 0, n - 1)  # the sample closing it
        lag = frame / fs - times
        for sign, tau in ((1.0, tau_decay), (-1.0, tau_rise)):
            u = np.bincount(frame, weights=np.exp(-lag / tau), minlength=n)
            out[:, c] += sign * lfilter([1.0], [1.0, -np.exp(-1.0 / (fs * tau))], u)
    return out / peak


def draw_recording(
    rng: np.random.Generator, n_seconds: float, *, max_rois: int = 48
) -> SyntheticRecording:
    """One recording of about ``n_seconds`` from the families above."""
    fs = float(_log_uniform(rng, 4.0, 200.0))
    n = max(16, round(n_seconds * fs))
    n_rois = 1 if rng.random() < 0.35 else int(_log_uniform(rng, 2, max_rois + 1))
    tau_decay = float(_log_uniform(rng, 0.05, 2.5))
    tau_rise = float(_log_uniform(rng, 0.001, min(0.25, tau_decay / 2.5)))
    rate = float(_log_uniform(rng, 0.02, 8.0)) * np.exp(rng.normal(0, 0.7, n_rois))
    rate[rng.random(n_rois) < 0.1] = 0.0  # silent ROIs (neuropil, dendrites)
    correlation = float(rng.uniform(0, 0.95)) if n_rois > 1 else 0.0
    drive_gain = float(rng.uniform(0, 2.0))
    drive_timescale = float(_log_uniform(rng, 0.2, 10.0))
    shared = _smooth(rng, n, drive_timescale, fs, 1)
    private = _smooth(rng, n, drive_timescale, fs, n_rois)
    sign = np.where(rng.random(n_rois) < 0.85, 1.0, -1.0)
    drive = np.sqrt(correlation) * shared * sign + np.sqrt(1 - correlation) * private
    intensity = np.minimum(rate * np.exp(drive_gain * drive - drive_gain**2 / 2), MAX_RATE)

    burst_rate = float(rng.uniform(0, 0.3)) if rng.random() < 0.5 else 0.0
    burst_size = float(rng.uniform(2, 10))
    spikes = []
    for c in range(n_rois):
        counts = rng.poisson(intensity[:, c] / fs)
        times = np.repeat(np.arange(n), counts) / fs - rng.random(int(counts.sum())) / fs
        n_bursts = rng.poisson(burst_rate * n / fs) if rate[c] > 0 else 0
        for start in rng.uniform(0, n / fs, n_bursts):
            size = rng.geometric(1 / burst_size)
            times = np.append(times, start + rng.uniform(0, 0.15, size))
        spikes.append(np.sort(times[(times > -1.0) & (times <= (n - 1) / fs)]))
    if rng.random() < 0.3:  # one burst larger than any before it, late in the recording
        c = int(rng.integers(n_rois))
        start = rng.uniform(0.6, 0.95) * (n - 1) / fs
        extra = start + rng.uniform(0, 0.2, int(rng.integers(10, 40)))
        spikes[c] = np.sort(np.append(spikes[c], extra[extra <= (n - 1) / fs]))

    amplitude = float(_log_uniform(rng, 0.05, 1.5)) * np.exp(rng.normal(0, 0.3, n_rois))
    calcium = _calcium(spikes, n, fs, tau_rise, tau_decay) * amplitude
    saturation = float(_log_uniform(rng, 0.3, 3.0)) if rng.random() < 0.3 else None
    if saturation is not None:
        calcium = calcium / (1 + calcium / saturation)

    scale = float(np.median(amplitude))
    drift = _smooth(rng, n, float(_log_uniform(rng, 5, 60)), fs, n_rois)
    signal = calcium + float(_log_uniform(rng, 1e-3, 0.3)) * scale * drift
    neuropil = float(rng.uniform(0, 0.3)) if rng.random() < 0.5 else 0.0
    if neuropil and n_rois > 1:
        signal = signal + neuropil * calcium.mean(1, keepdims=True)

    snr = float(_log_uniform(rng, 0.25, 40.0)) * np.exp(rng.normal(0, 0.3, n_rois))
    sigma = amplitude / snr
    target = signal
    if rng.random() < 0.3:  # temporally correlated noise: partly predictable
        share = float(rng.uniform(0.1, 0.5))
        a = float(rng.uniform(0.3, 0.9))
        ar = lfilter([np.sqrt(1 - a * a)], [1.0, -a], rng.standard_normal((n, n_rois)), axis=0)
        target = target + share * sigma * ar
    shot = float(rng.uniform(0, 1.0)) if rng.random() < 0.5 else 0.0
    scale_noise = np.sqrt(1 + shot * np.clip(calcium / amplitude, 0, None))
    noisy = target + sigma * scale_noise * rng.standard_normal((n, n_rois))
    family = {
        "fs": fs,
        "rois": n_rois,
        "tau_rise": tau_rise,
        "tau_decay": tau_decay,
        "rate": float(np.median(rate)),
        "correlation": correlation,
        "snr": float(np.median(snr)),
        "saturation": saturation,
    }
    return SyntheticRecording(
        noisy=noisy.astype(np.float32),
        target=target.astype(np.float32),
        fs=fs,
        positions=rng.random((n_rois, 2)),
        family=family,
    )
