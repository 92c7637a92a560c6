"""``SimulatedRecording``: the ground truth, its noisy observations and their streaming.

Time conventions. Frame i of the volume starts at ``time[i] = i / fs``; plane p is
sampled ``p / (fs * n_planes)`` s later, so ROI r's i-th sample is taken at
``time[i] + roi_time_offset[r]``. ``clean_dff(times)`` takes absolute times: the value
for ROI r is its clean ΔF/F at exactly that instant, whatever its plane;
``clean_dff_frames()`` gives the values at each ROI's own sample times, the ones its
``F`` was made from. Spikes start before time 0 (a warm-up of at least ten decay
constants, so the recording opens in steady state); the truth is defined on
``[-warmup, n_frames / fs]``.

Observation model, per ROI r and sample t (a.u.):

- ``Fneu = N0_r (1 + b(t) + beta * P_r(t))`` plus noise, with ``b`` a slow shared
  background and ``P_r`` the Gaussian-blurred ΔF/F of the ROIs around r (same plane);
- ``F = F0_r (1 + drift_r(t)) (1 + dff_r(t)) + r_np * Fneu_clean`` plus noise;
- noise: Gaussian with variance ``shot_noise * signal + read_noise**2`` (Fneu: scaled by
  ``neuropil_noise``), independent per sample;
- ``spks``: per-frame count of true spikes times ``F0_r * amplitude_r`` and a gamma
  jitter (CV 0.3), like the fluorescence-unit amplitudes of a deconvolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.schema import frame_times, new_recording, package_version
from cst_neuro.simulate import dynamics as dyn
from cst_neuro.simulate.config import SimulationConfig
from cst_neuro.simulate.layout import (
    NeuropilBlur,
    background_texture,
    make_footprints,
    place_somata,
)

_CACHE_LIMIT = 20_000_000  # cache spikes when n_rois * frames is at most this
_MOVIE_PIXELS = 1 << 22  # pixels rendered at once (about 32 MB of float64)


@dataclass(frozen=True)
class Block:
    """Frames ``start:start + len`` of every ROI: clean ΔF/F and noisy traces (time, roi)."""

    start: int
    dff: np.ndarray  # float64, at each ROI's sample times
    F: np.ndarray  # float32
    Fneu: np.ndarray  # float32
    spks: np.ndarray  # float32
    population: np.ndarray  # (T, planes, ny, nx) blurred ΔF/F grid, for movies

    @property
    def stop(self) -> int:
        return self.start + self.dff.shape[0]


class SimulatedRecording:
    """A simulated recording: exact continuous-time truth plus Suite2p-like observations.

    Construction is cheap (layout and parameters only); traces are generated on demand,
    chunk by chunk, with random draws keyed by (seed, chunk), so every access path gives
    bit-identical numbers.

    Attributes (per ROI arrays have length ``n_rois``): ``config``; ``indicator``;
    ``roi_plane``; ``roi_time_offset`` (s); ``footprints`` (``layout.Footprints``);
    ``is_cell`` (true somata; the others have 0.3x amplitude and 0.5x latent gain);
    ``cell_prob``; ``f0`` and ``n0`` (somatic and neuropil baselines, a.u.);
    ``amplitude`` (peak ΔF/F of one spike); ``latent`` (``dynamics.Latent``, with the
    rates); ``neuropil`` (``layout.NeuropilBlur``).
    """

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.indicator = config.kernel
        n, fs, c = config.n_rois, config.fs, config.chunk_frames
        self.roi_plane = _planes(n, config.n_planes)
        self.plane_offsets = np.arange(config.n_planes) / (fs * config.n_planes)
        self.roi_time_offset = self.plane_offsets[self.roi_plane]
        self._layout(config)
        rng = dyn.stream_rng(config.seed, 6)
        self.is_cell = rng.random(n) < config.cell_fraction
        self.cell_prob = np.where(self.is_cell, rng.beta(8, 2, n), rng.beta(2, 8, n))
        self.cell_prob = self.cell_prob.astype(np.float32)
        self.f0 = config.baseline_f * np.exp(0.4 * rng.standard_normal(n) - 0.08)
        self.n0 = self.f0 * config.neuropil_ratio * rng.uniform(0.8, 1.2, n)
        sigma = config.amplitude_spread
        self.amplitude = (
            self.indicator.amplitude
            * np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2)
            * np.where(self.is_cell, 1.0, 0.3)
        )
        self._drift = dyn.SlowSignal(
            rng, n=n, n_terms=2, period=(60, 600), amp=config.baseline_drift
        )
        self._background = dyn.SlowSignal(
            rng, n=config.n_planes, n_terms=3, period=(20, 200), amp=0.05
        )
        self.latent = dyn.make_latent(
            config, positions=self.footprints.centre, plane=self.roi_plane, is_cell=self.is_cell
        )
        self.neuropil = NeuropilBlur(
            self.footprints.centre, self.roi_plane, config.fov, config.neuropil_sigma,
            config.n_planes,
        )  # fmt: skip
        warmup_frames = math.ceil((10 * self.indicator.tau_decay + 1) * fs)
        self._k_min = -math.ceil(warmup_frames / c)
        self._k_end = math.ceil((config.n_frames + 2) / c)  # chunks cover frame n_frames + 1
        self._states = {self._k_min: np.zeros((2, n))}
        self._cache_spikes = n * (self._k_end - self._k_min) * c <= _CACHE_LIMIT
        self._spikes: dict[int, dyn.Spikes] = {}

    def _layout(self, config: SimulationConfig) -> None:
        rng = dyn.stream_rng(config.seed, 1)
        centres = np.empty((config.n_rois, 2))
        for p in range(config.n_planes):
            idx = np.flatnonzero(self.roi_plane == p)
            centres[idx] = place_somata(rng, idx.size, config.fov, config.soma_radius)
        self.footprints = make_footprints(rng, centres, config.fov, config.soma_radius)
        self.texture = np.stack([background_texture(rng, config.fov) for _ in
                                 range(config.n_planes)])  # fmt: skip

    # ---- sizes and times -------------------------------------------------------------

    @property
    def n_rois(self) -> int:
        return self.config.n_rois

    @property
    def n_frames(self) -> int:
        return self.config.n_frames

    @property
    def fs(self) -> float:
        return float(self.config.fs)

    @property
    def time(self) -> np.ndarray:
        """Frame (plane 0) acquisition times in seconds."""
        return frame_times(self.n_frames, self.fs)

    @property
    def warmup(self) -> float:
        """Seconds of simulated activity before time 0 (the truth is defined from -warmup)."""
        return -self._k_min * self.config.chunk_frames / self.fs - 1.0 / self.fs

    # ---- spikes and exact calcium ------------------------------------------------------

    def _chunk_spikes(self, k: int) -> dyn.Spikes:
        if k in self._spikes:
            return self._spikes[k]
        cfg = self.config
        spikes = dyn.draw_spikes(
            self.latent, seed=cfg.seed, chunk=k, chunk_frames=cfg.chunk_frames, fs=self.fs,
            offsets=self.roi_time_offset,
        )  # fmt: skip
        if self._cache_spikes:
            self._spikes[k] = spikes
        return spikes

    def _iter_sums(self, k0: int, k1: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Exponential sums (C, N, 2) and spike counts (C, N) of chunks k0..k1-1, in order."""
        state = self._state(k0)
        for k in range(k0, k1):
            y, state, counts = dyn.calcium_chunk(
                self._chunk_spikes(k), state, indicator=self.indicator, chunk=k,
                chunk_frames=self.config.chunk_frames, fs=self.fs, offsets=self.roi_time_offset,
            )  # fmt: skip
            self._states.setdefault(k + 1, state)
            yield k, y, counts

    def _state(self, k: int) -> np.ndarray:
        """Filter state at the start of chunk k, from the nearest earlier known state."""
        if k not in self._states:
            known = max(j for j in self._states if j <= k)
            for _ in self._iter_sums(known, k):
                pass
        return self._states[k]

    def spike_times(self, roi: int | None = None, *, warmup: bool = False) -> Any:
        """Spike times (s) of one ROI, or a list for all; ``warmup`` adds those before 0."""
        lo = -np.inf if warmup else 0.0
        times, rois = [], []
        for k in range(self._k_min, self._k_end):
            s = self._chunk_spikes(k)
            keep = (s.time >= lo) & (s.time < self.config.duration)
            times.append(s.time[keep])
            rois.append(s.roi[keep])
        t, r = np.concatenate(times), np.concatenate(rois)
        order = np.argsort(r, kind="stable")  # chunks are in time order: stays sorted in time
        bounds = np.searchsorted(r[order], np.arange(self.n_rois + 1))
        out = np.split(t[order], bounds[1:-1])
        return out if roi is None else out[int(self._roi_index(roi)[0])]

    def clean_dff(self, times: Any, *, roi: Any = None) -> np.ndarray:
        """Exact clean ΔF/F (len(times), n) at absolute real times (see the module docstring).

        ``roi``: None for all ROIs, an index or an array of indices. Times must lie in
        ``[-warmup, n_frames / fs]``.
        """
        t = self._check_times(times)
        rois = self._roi_index(roi)
        fs, c = self.fs, self.config.chunk_frames
        off = self.roi_time_offset[rois]
        j = np.floor((t[:, None] - off[None, :]) * fs).astype(np.int64)  # anchor sample
        j -= j / fs + off[None, :] > t[:, None]  # the anchor must not be after t (rounding)
        j = np.maximum(j, self._k_min * c)
        r_b = np.broadcast_to(rois, j.shape)
        sums = np.empty((*j.shape, 2))
        for k in np.unique(j // c):
            m = j // c == k
            y = self._chunk_sums(int(k))
            sums[m] = y[j[m] - k * c, r_b[m]]
        lag = t[:, None] - (j / fs + off[None, :])
        taus = np.array([self.indicator.tau_decay, self.indicator.tau_rise])
        sums *= np.exp(-lag[..., None] / taus)
        self._add_residual(sums, t, j, r_b, taus)
        return dyn.dff_from_sums(sums, self.amplitude[rois], self.indicator)

    def _chunk_sums(self, k: int) -> np.ndarray:
        for _, y, _counts in self._iter_sums(k, k + 1):
            return y
        raise AssertionError("unreachable")

    def _add_residual(self, sums, t, j, r_b, taus) -> None:
        """Add the spikes after the anchor sample j and strictly before t (frame j + 1)."""
        c = self.config.chunk_frames
        nxt = j + 1
        for k in np.unique(nxt // c):
            m = nxt // c == k
            s = self._chunk_spikes(int(k))
            key = s.roi * c + (s.frame - k * c)
            q = r_b[m] * c + (nxt[m] - k * c)
            lo, hi = np.searchsorted(key, q, "left"), np.searchsorted(key, q, "right")
            tm = np.broadcast_to(t[:, None], j.shape)[m]
            add = np.zeros((q.size, 2))
            for step in range(int((hi - lo).max(initial=0))):
                idx = np.minimum(lo + step, key.size - 1)
                ok = (lo + step < hi) & (s.time[idx] < tm)
                lag = np.where(ok, tm - s.time[idx], 0.0)
                add += ok[:, None] * np.exp(-lag[:, None] / taus)
            sums[m] += add

    def _check_times(self, times: Any) -> np.ndarray:
        t = np.atleast_1d(np.asarray(times, dtype=np.float64))
        if t.ndim != 1:
            raise InputError(None, f"times must be one-dimensional, got shape {t.shape}")
        lo, hi = -self.warmup, self.config.duration
        bad = ~((t >= lo) & (t <= hi))  # NaN is bad too
        if bad.any():
            raise InputError(
                None, f"times must be finite and within [{lo:.4g}, {hi:.4g}] s; "
                f"{int(bad.sum())} are not (first: {t[bad][0]!r})",
            )  # fmt: skip
        return t

    def _roi_index(self, roi: Any) -> np.ndarray:
        if roi is None:
            return np.arange(self.n_rois)
        idx = np.atleast_1d(np.asarray(roi))
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise InputError(None, f"roi must be an index or 1-D array of indices, got {roi!r}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rois):
            raise InputError(None, f"roi index out of range 0..{self.n_rois - 1}: {roi!r}")
        return idx.astype(np.int64)

    # ---- observations, block by block ----------------------------------------------------

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[Block]:
        """Frames ``start:stop`` in chunk-sized blocks (memory bounded by one chunk)."""
        stop = self.n_frames if stop is None else stop
        if not 0 <= start <= stop <= self.n_frames:
            raise InputError(None, f"frames {start}:{stop} outside 0:{self.n_frames}")
        c = self.config.chunk_frames
        if start == stop:
            return
        for k, y, counts in self._iter_sums(start // c, (stop - 1) // c + 1):
            dff = dyn.dff_from_sums(y, self.amplitude, self.indicator)
            block = self._observe(k, dff, counts)
            a, b = max(start - k * c, 0), min(stop - k * c, c)
            yield Block(
                k * c + a, dff[a:b], block["F"][a:b], block["Fneu"][a:b], block["spks"][a:b],
                block["population"][a:b],
            )  # fmt: skip

    def _plane_times(self, frames: np.ndarray) -> np.ndarray:
        """(T, planes) sample times of each plane at ``frames``."""
        return dyn.sample_times(frames, self.fs, self.plane_offsets)

    def _observe(self, k: int, dff: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Noisy F, Fneu, spks (float32) of chunk k, and the blurred population grid."""
        cfg, c = self.config, self.config.chunk_frames
        plane_t = self._plane_times(np.arange(k * c, (k + 1) * c))
        grid = self.neuropil.grid(dff)
        population = self.neuropil.splat @ grid.reshape(c, -1).T  # (N, C)
        background = self._background(plane_t, np.arange(cfg.n_planes))[:, self.roi_plane]
        fneu = (background + 1.0 + cfg.neuropil_activity * population.T).astype(np.float32)
        fneu *= self.n0.astype(np.float32)
        soma = (self.f0 * (1.0 + self._drift(plane_t, self.roi_plane))).astype(np.float32)
        f = soma * (1.0 + dff).astype(np.float32) + np.float32(cfg.neuropil_coefficient) * fneu
        rng = dyn.stream_rng(cfg.seed, 4, k)
        eps = rng.standard_normal(f.shape, dtype=np.float32)
        noisy_f = f + _noise_std(f, cfg) * eps
        rng.standard_normal(dtype=np.float32, out=eps)
        noisy_n = fneu + np.float32(cfg.neuropil_noise) * _noise_std(fneu, cfg) * eps
        spks = np.zeros(counts.shape, dtype=np.float32)
        nz = np.nonzero(counts)
        jitter = rng.gamma(counts[nz] / 0.09, 0.09)  # sum of per-spike gammas, CV 0.3
        spks[nz] = jitter * (self.f0 * self.amplitude)[nz[1]]
        return {"F": noisy_f, "Fneu": noisy_n, "spks": spks, "population": grid}

    def traces(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """``F``, ``Fneu``, ``spks`` (float32) and clean ``dff`` (float64), shape (time, roi)."""
        parts = list(self.blocks(start, stop))
        names = ("dff", "F", "Fneu", "spks")
        if not parts:
            return {k: np.empty((0, self.n_rois)) for k in names}
        return {k: np.concatenate([getattr(b, k) for b in parts]) for k in names}

    def clean_dff_frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(time, roi) clean ΔF/F at each ROI's own sample times of frames ``start:stop``."""
        stop = self.n_frames if stop is None else stop
        if not 0 <= start <= stop <= self.n_frames:
            raise InputError(None, f"frames {start}:{stop} outside 0:{self.n_frames}")
        if start == stop:
            return np.empty((0, self.n_rois))
        c = self.config.chunk_frames
        out = [dyn.dff_from_sums(y, self.amplitude, self.indicator)
               for _, y, _ in self._iter_sums(start // c, (stop - 1) // c + 1)]  # fmt: skip
        return np.concatenate(out)[start % c : start % c + stop - start]

    def mean_rate(self) -> np.ndarray:
        """(N,) long-run expected firing rate of each ROI (Hz)."""
        return self.latent.nu.copy()

    # ---- images -------------------------------------------------------------------------

    def mean_image(self, plane: int = 0) -> np.ndarray:
        """(Ly, Lx) expected mean frame of ``plane`` (noise-free, from the model's means)."""
        ind = self.indicator
        mean_dff = self.amplitude * self.latent.nu * (ind.tau_decay - ind.tau_rise) / ind.peak
        bright = self.f0 * (1.0 + mean_dff)
        return self._render_static(plane, bright)

    def _render_static(self, plane: int, roi_values: np.ndarray) -> np.ndarray:
        fp = self.footprints
        img = self._background_level(plane) * self.texture[plane]
        sel = self.roi_plane[fp.roi] == plane
        np.add.at(img, (fp.y[sel], fp.x[sel]), fp.shape[sel] * roi_values[fp.roi[sel]])
        return img

    def _background_level(self, plane: int) -> float:
        in_plane = self.roi_plane == plane
        return float(np.mean(self.n0[in_plane]))

    def movie(self, start: int = 0, stop: int | None = None, *, plane: int = 0) -> np.ndarray:
        """(time, Ly, Lx) float32 frames of one plane: somata, neuropil and noise.

        Pixels: background ``n0`` level x a smooth texture x (1 + b(t) + beta * blurred
        population ΔF/F), plus each soma's peak-1 Gaussian x ``F0 (1 + drift) (1 + dff)``,
        plus shot and read noise. The whole movie is large (4 bytes per pixel and frame):
        ask for ``start:stop`` pieces, or stream with ``blocks()`` and ``render()``.
        """
        if not 0 <= plane < self.config.n_planes:
            raise InputError(None, f"plane {plane} outside 0..{self.config.n_planes - 1}")
        frames = [m for b in self.blocks(start, stop) for m in self.render(b, plane)]
        return np.concatenate(frames) if frames else np.empty((0, *self.config.fov), np.float32)

    def render(self, block: Block, plane: int) -> Iterator[np.ndarray]:
        """Movie frames of ``block`` for ``plane``, in pieces of bounded size."""
        cfg, fp = self.config, self.footprints
        ly, lx = cfg.fov
        sel = self.roi_plane[fp.roi] == plane
        shapes = sp.csr_matrix(
            (fp.shape[sel], (fp.y[sel] * lx + fp.x[sel], fp.roi[sel])), shape=(ly * lx, self.n_rois)
        )  # (pixels, N): sums duplicates where somata overlap
        step = max(1, _MOVIE_PIXELS // (ly * lx))
        level = self._background_level(plane) * self.texture[plane]
        for a in range(0, block.dff.shape[0], step):
            b = min(a + step, block.dff.shape[0])
            frames = np.arange(block.start + a, block.start + b)
            plane_t = self._plane_times(frames)
            bg = self._background(plane_t, np.arange(cfg.n_planes))[:, plane]
            field = self.neuropil.at_pixels(block.population[a:b], plane)
            img = level * (1.0 + bg[:, None, None] + cfg.neuropil_activity * field)
            drift = self._drift(plane_t, self.roi_plane)
            soma = self.f0 * (1.0 + drift) * (1.0 + block.dff[a:b])  # (T, N)
            img += np.asarray(shapes @ soma.T).T.reshape(b - a, ly, lx)
            noise = np.stack([_frame_noise(cfg.seed, plane, int(i), (ly, lx)) for i in frames])
            yield (img + _noise_std(img, cfg) * noise).astype(np.float32)

    # ---- the Recording ---------------------------------------------------------------------

    def recording(self) -> xr.Dataset:
        """The whole recording as a Recording (in memory): F, Fneu, spks and ROI metadata."""
        tr = self.traces()
        fp = self.footprints
        centroid = fp.centroid()
        cfg = self.config
        mean = np.stack([self.mean_image(p) for p in range(cfg.n_planes)]).astype(np.float32)
        image: tuple[tuple[str, ...], np.ndarray] = ("y", "x"), mean[0]
        if cfg.n_planes > 1:
            image = ("plane", "y", "x"), mean
        data_vars = {
            "F": (("time", "roi"), tr["F"]),
            "Fneu": (("time", "roi"), tr["Fneu"]),
            "spks": (("time", "roi"), tr["spks"]),
            "iscell": ("roi", self.cell_prob > 0.5),
            "cell_prob": ("roi", self.cell_prob),
            "footprint_roi": ("pix", fp.roi),
            "footprint_y": ("pix", fp.y),
            "footprint_x": ("pix", fp.x),
            "footprint_weight": ("pix", fp.weight.astype(np.float32)),
            "mean_image": image,
        }
        coords = {
            "roi": ("roi", np.arange(self.n_rois, dtype=np.int64)),
            "roi_y": ("roi", centroid[:, 0], {"units": "pixels"}),
            "roi_x": ("roi", centroid[:, 1], {"units": "pixels"}),
            "roi_plane": ("roi", self.roi_plane.astype(np.int16)),
            "roi_time_offset": ("roi", self.roi_time_offset, {"units": "s"}),
            "y": ("y", np.arange(cfg.fov[0], dtype=np.float64), {"units": "pixels"}),
            "x": ("x", np.arange(cfg.fov[1], dtype=np.float64), {"units": "pixels"}),
        }
        attrs = {
            "source_version": package_version(),
            "neuropil_coefficient": float(cfg.neuropil_coefficient),
            "nplanes": int(cfg.n_planes),
            "indicator": self.indicator.name,
            "simulation_config": cfg.to_json(),
        }
        return new_recording(
            data_vars, time=self.time, fs=self.fs, source_format="simulated",
            source_name=f"simulate(seed={cfg.seed})", coords=coords, attrs=attrs,
        )  # fmt: skip


def simulate(config: SimulationConfig | None = None, **overrides: Any) -> SimulatedRecording:
    """A simulated recording from ``config`` (defaults if None) with fields overridden."""
    config = SimulationConfig() if config is None else config
    if overrides:
        config = config.replace(**overrides)
    return SimulatedRecording(config)


def _planes(n: int, n_planes: int) -> np.ndarray:
    """Contiguous plane assignment (Suite2p's combined order: plane 0's ROIs first)."""
    sizes = np.full(n_planes, n // n_planes) + (np.arange(n_planes) < n % n_planes)
    return np.repeat(np.arange(n_planes), sizes).astype(np.int64)


def _frame_noise(seed: int, plane: int, frame: int, shape: tuple[int, int]) -> np.ndarray:
    """Standard normal pixel noise of one movie frame (keyed by plane and frame)."""
    return dyn.stream_rng(seed, 5, plane, frame).standard_normal(shape, dtype=np.float32)


def _noise_std(signal: np.ndarray, cfg: SimulationConfig) -> np.ndarray:
    """Standard deviation of shot plus read noise on ``signal`` (keeps its float dtype)."""
    var = np.maximum(signal, 0) * signal.dtype.type(cfg.shot_noise)
    var += signal.dtype.type(cfg.read_noise**2)
    return np.sqrt(var, out=var)
