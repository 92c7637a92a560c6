"""Continuous-time dynamics: latent fields, firing rates, spikes and exact calcium.

The log firing rate of ROI r at real time t is

    u_r(t) = g_r * (sum_w a_w sin(w_w t - k_w . p_r - phi_w)       travelling plane waves
                    + sum_k W_rk sin(w_k t + phi_k))                 shared oscillators
             + d sin(w_d t + phi_d)                                  slow drift

with ``p_r`` the ROI's position (y, x, plane depth), ``W_rk`` a Gaussian bump around the
oscillator's centre (so nearby ROIs share oscillators) and incommensurate frequencies
(``f0 * sqrt(prime)``). The rate is ``nu_r * exp(u_r(t)) / Z_r`` with ``Z_r`` the product
of ``I0(amplitude)`` over the sinusoids, so that the long-run mean rate is ``nu_r``.
Spikes are an inhomogeneous Poisson process drawn by thinning (Lewis & Shedler 1979)
against the bound ``nu_r * exp(max u_r) / Z_r``: spike times are real numbers.

Calcium is the sum of unit-peak difference-of-exponential kernels over past spikes. At
each ROI's sample times it is computed by the exact recurrence of each exponential,
``y_i = y_{i-1} e^{-dt/tau} + sum_{s in (t_{i-1}, t_i]} e^{-(t_i - s)/tau}``, carried
across chunks by the filter state, so any chunking gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter
from scipy.special import i0e

from cst_neuro.simulate.config import Indicator, SimulationConfig

PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
PLANE_SPACING = 30.0  # pixels-equivalent depth between planes, for the waves' phase


def stream_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """An independent generator for (seed, stream, keys); negative keys are allowed."""
    spawn_key = (stream, *(2 * k if k >= 0 else -2 * k - 1 for k in keys))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn_key))


def log_i0(x: np.ndarray) -> np.ndarray:
    """``log I0(x)`` without overflow (I0: modified Bessel function of order 0)."""
    x = np.abs(x)
    return np.log(i0e(x)) + x


@dataclass(frozen=True)
class Latent:
    """Parameters of the latent drive and the rate of every ROI (N ROIs)."""

    wave_omega: np.ndarray  # (W,) rad/s
    wave_phase: np.ndarray  # (W, N) k_w . p_r + phi_w
    wave_amp: np.ndarray  # (W,)
    osc_omega: np.ndarray  # (K,)
    osc_phase: np.ndarray  # (K,)
    osc_weight: np.ndarray  # (N, K) signed log-rate amplitudes
    drift: tuple[float, float, float]  # (omega, phase, amplitude)
    gain: np.ndarray  # (N,)
    nu: np.ndarray  # (N,) long-run mean rate, Hz
    log_norm: np.ndarray  # (N,) log Z_r
    log_bound: np.ndarray  # (N,) max_t u_r(t)

    @property
    def rate_max(self) -> np.ndarray:
        """(N,) upper bound of each ROI's rate (Hz), used for thinning."""
        return self.nu * np.exp(self.log_bound - self.log_norm)

    def drive(self, t: np.ndarray, roi: np.ndarray) -> np.ndarray:
        """``u_r(t)`` for paired arrays of times and ROI indices."""
        shared = np.zeros(t.shape)
        for w in range(self.wave_omega.size):
            phase = self.wave_phase[w, roi]
            shared += self.wave_amp[w] * np.sin(self.wave_omega[w] * t - phase)
        for k in range(self.osc_omega.size):
            shared += self.osc_weight[roi, k] * np.sin(self.osc_omega[k] * t + self.osc_phase[k])
        omega, phase, amp = self.drift
        return self.gain[roi] * shared + amp * np.sin(omega * t + phase)

    def rate(self, t: np.ndarray, roi: np.ndarray) -> np.ndarray:
        """Firing rate (Hz) for paired arrays of times and ROI indices."""
        return self.nu[roi] * np.exp(self.drive(t, roi) - self.log_norm[roi])


def make_latent(
    config: SimulationConfig, *, positions: np.ndarray, plane: np.ndarray, is_cell: np.ndarray
) -> Latent:
    """Draw the latent field for ROIs at ``positions`` (N, 2) pixels in planes ``plane``."""
    rng = stream_rng(config.seed, 2)
    n = positions.shape[0]
    size = float(max(config.fov))
    p3 = np.column_stack([positions, plane * PLANE_SPACING])  # (N, 3)

    n_w = config.n_waves
    direction = rng.uniform(0, 2 * np.pi, n_w)
    tilt = rng.uniform(-0.5, 0.5, n_w)
    wavenumber = 2 * np.pi / (rng.uniform(0.6, 1.5, n_w) * size)
    k_vec = wavenumber[:, None] * np.column_stack([np.sin(direction), np.cos(direction), tilt])
    wave_phase = k_vec @ p3.T + rng.uniform(0, 2 * np.pi, n_w)[:, None]
    wave_omega = 2 * np.pi * rng.uniform(0.1, 0.4, n_w)
    wave_amp = np.full(n_w, config.wave_amplitude)

    n_k = config.n_oscillators
    f0 = rng.uniform(0.04, 0.08)
    osc_omega = 2 * np.pi * f0 * np.sqrt(np.resize(PRIMES, n_k)) * (1 + np.arange(n_k) // 12)
    osc_phase = rng.uniform(0, 2 * np.pi, n_k)
    centre = rng.uniform(0, 1, (n_k, 2)) * np.asarray(config.fov)
    width = rng.uniform(0.25, 0.5, n_k) * size
    sign = rng.choice([-1.0, 1.0], n_k)
    dist2 = ((positions[:, None, :] - centre[None]) ** 2).sum(-1)  # (N, K)
    osc_weight = config.oscillator_amplitude * sign * np.exp(-dist2 / (2 * width**2))

    drift = (2 * np.pi * rng.uniform(1 / 600, 1 / 200), rng.uniform(0, 2 * np.pi))
    gain = rng.uniform(0.7, 1.3, n) * np.where(is_cell, 1.0, 0.5)
    sigma = config.rate_spread
    nu = config.rate_hz * np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2)

    amps = np.concatenate([np.broadcast_to(wave_amp, (n, n_w)), np.abs(osc_weight)], axis=1)
    amps = amps * gain[:, None]
    d = config.drift_amplitude
    log_norm = log_i0(amps).sum(axis=1) + log_i0(np.array(d))
    log_bound = amps.sum(axis=1) + d
    return Latent(
        wave_omega=wave_omega,
        wave_phase=wave_phase,
        wave_amp=wave_amp,
        osc_omega=osc_omega,
        osc_phase=osc_phase,
        osc_weight=osc_weight,
        drift=(float(drift[0]), float(drift[1]), float(d)),
        gain=gain,
        nu=nu,
        log_norm=log_norm,
        log_bound=log_bound,
    )


@dataclass(frozen=True)
class Spikes:
    """Spikes of one chunk, sorted by (roi, time); ``frame`` is the first sample at or after."""

    time: np.ndarray  # (S,) float64 seconds
    roi: np.ndarray  # (S,) int64
    frame: np.ndarray  # (S,) int64 global frame index whose sample closes the spike's interval


def draw_spikes(
    latent: Latent, *, seed: int, chunk: int, chunk_frames: int, fs: float, offsets: np.ndarray
) -> Spikes:
    """Spikes of chunk ``chunk``: for ROI r, the window ``(t_{kC-1}, t_{kC+C-1}]`` of its samples.

    ``t_i = i / fs + offsets[r]`` is ROI r's i-th sample time, so every spike of the chunk
    falls in an interval that closes at one of the chunk's own frames.
    """
    rng = stream_rng(seed, 3, chunk)
    first = chunk * chunk_frames
    span = chunk_frames / fs
    start = (first - 1) / fs + offsets  # (N,)
    bound = latent.rate_max
    counts = rng.poisson(bound * span)
    roi = np.repeat(np.arange(bound.size), counts)
    t = start[roi] + span * (1.0 - rng.random(roi.size))  # uniform on (start, start + span]
    keep = rng.random(roi.size) * bound[roi] < latent.rate(t, roi)
    t, roi = t[keep], roi[keep]
    order = np.lexsort((t, roi))
    t, roi = t[order], roi[order]
    frame = np.ceil((t - offsets[roi]) * fs).astype(np.int64)
    np.clip(frame, first, first + chunk_frames - 1, out=frame)
    return Spikes(time=t, roi=roi, frame=frame)


def sample_times(frames: np.ndarray, fs: float, offsets: np.ndarray) -> np.ndarray:
    """(T, N) sample times ``frames[i] / fs + offsets[r]`` (one formula used everywhere)."""
    return np.asarray(frames, dtype=np.float64)[:, None] / fs + offsets[None, :]


def calcium_chunk(
    spikes: Spikes,
    state: np.ndarray,
    *,
    indicator: Indicator,
    chunk: int,
    chunk_frames: int,
    fs: float,
    offsets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponential sums at the chunk's samples, their final filter state, spike counts.

    ``state`` (2, N) is the lfilter state carried from the previous chunk (zeros before
    the first). Returns ``y`` (C, N, 2): ``sum_{s<=t_i} exp(-(t_i - s)/tau)`` for
    tau = (tau_decay, tau_rise); the new state; and ``counts`` (C, N) of spikes per frame.
    """
    n = offsets.size
    first = chunk * chunk_frames
    local = (spikes.frame - first) * n + spikes.roi
    lag = (spikes.frame / fs + offsets[spikes.roi]) - spikes.time
    counts = np.bincount(local, minlength=chunk_frames * n).reshape(chunk_frames, n)
    y = np.empty((chunk_frames, n, 2))
    new_state = np.empty_like(state)
    for j, tau in enumerate((indicator.tau_decay, indicator.tau_rise)):
        weight = np.exp(-lag / tau)
        u = np.bincount(local, weights=weight, minlength=chunk_frames * n)
        alpha = np.exp(-1.0 / (fs * tau))
        out, zf = lfilter(
            [1.0], [1.0, -alpha], u.reshape(chunk_frames, n), axis=0, zi=state[j : j + 1]
        )
        y[:, :, j] = out
        new_state[j] = zf[0]
    return y, new_state, counts


def dff_from_sums(y: np.ndarray, amplitude: np.ndarray, indicator: Indicator) -> np.ndarray:
    """Clean ΔF/F from exponential sums ``y`` (..., N, 2) and per-ROI spike amplitudes."""
    x = amplitude * (y[..., 0] - y[..., 1]) / indicator.peak
    if indicator.saturation is not None:
        x = x / (1.0 + x / indicator.saturation)
    return x


class SlowSignal:
    """Slow fluctuations of n columns: ``x_c(t) = sum_j w_jc sin(omega_j t + phi_j)``.

    The sinusoids are shared (periods drawn in ``period``, seconds); the weights are
    uniform in ``[-amp, amp] / n_terms``, so ``|x_c(t)| <= amp``.
    """

    def __init__(self, rng: np.random.Generator, *, n: int, n_terms: int, period: tuple, amp):
        self.omega = 2 * np.pi / rng.uniform(period[0], period[1], n_terms)
        self.phase = rng.uniform(0, 2 * np.pi, n_terms)
        self.weight = rng.uniform(-1, 1, (n_terms, n)) * (amp / n_terms)

    def __call__(self, plane_times: np.ndarray, plane: np.ndarray) -> np.ndarray:
        """(T, n) values; column c is sampled at ``plane_times[:, plane[c]]`` (T, planes)."""
        out = np.empty((plane_times.shape[0], plane.size))
        for p in range(plane_times.shape[1]):
            cols = np.flatnonzero(plane == p)
            waves = np.sin(plane_times[:, p : p + 1] * self.omega + self.phase)  # (T, J)
            out[:, cols] = waves @ self.weight[:, cols]
        return out
