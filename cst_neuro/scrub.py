"""Scrubbing a model's reconstruction at sub-frame resolution: what a viewer shows at time t.

This module owns the Qt-free state behind the napari plugin's CST widget
(``napari_plugin._widget``) and ``cst-neuro view``, in the spirit of napari-animation
(all logic testable without Qt, the widget a thin shell). A ``ScrubSession`` binds a
trained model (``cst_neuro.reconstruct.Reconstructor``, whose cached window contexts make
each new sub-frame time one decoder pass per blended window) to a Recording and a
sub-frame factor K; ``ScrubSession.from_prior`` makes that model from the calcium prior
zero-shot (``fit`` with ``max_epochs=0``: seconds), so a recording can be scrubbed before
any training:

- the time axis a slider walks: ``t0 + j / (K·fs)``, K positions per frame
  (``slider_times``);
- ``frames_at(t)``: at any real-valued time, the reconstruction, the nearest observed
  frame and their difference, as images (grids and movies as they are, p×p patches put
  back together; ROI traces painted into their footprints' label image, or a one-row
  strip of ROIs when the recording has no footprints);
- ``channel_at(y, x)``: which ROI (or grid pixel) an image pixel shows, and ``trace``:
  its observed samples (marking frames the model never trained on), the dense
  reconstruction around a time, and linear / PCHIP interpolation baselines;
- ``scrub_layers``: the three layers as napari LayerData tuples, each a (time, ...) stack
  over the slider's time axis whose every time step is one shared frame buffer that the
  viewer fills on demand;
- exports: the reconstruction at K× the frame rate as a zarr store (``reconstruct`` +
  ``write_recording``), and a multi-page ImageJ TIFF movie (tifffile) of a time range.

Threads: a viewer calls ``frames_at`` and ``trace`` from worker threads. Queries of the
session's model share one context cache and hold a lock for one frame's worth of times at
most, so a long trace computation never delays a frame by more than that; exports use a
reconstructor of their own and never hold it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from cst_neuro.atomic import OutputKind, atomic_file, check_output
from cst_neuro.blend import BlendSummary
from cst_neuro.checkpoint import Checkpoint
from cst_neuro.errors import InputError
from cst_neuro.io.movie import MARK_KEY, tiff_mark
from cst_neuro.prior import DEFAULT, NONE
from cst_neuro.reconstruct import Reconstructor

log = logging.getLogger(__name__)

DEFAULT_UPSAMPLE = 4  # K: slider positions per frame
TRACE_FRAMES = 128  # frames of dense reconstruction around the cursor in a trace plot
TRACE_POINTS_PER_FRAME = 8  # dense trace resolution, whatever K is
MOVIE_BLOCK = 64  # movie frames predicted per model call when exporting
ROLES = ("reconstruction", "raw", "difference")
MOVIE_MARK = "scrub movie"  # in the ImageJ metadata: --overwrite replaces only such movies
MOVIE = OutputKind(
    "a movie exported by cst-neuro", folder=False, recognise=lambda p: tiff_mark(p) == MOVIE_MARK
)

LayerData = tuple[Any, dict[str, Any], str]


@dataclass(frozen=True)
class Frames:
    """What the viewer shows at one time: images of equal shape, in the recording's units."""

    time: float  # seconds
    frame: int  # the nearest observed frame
    reconstruction: np.ndarray
    raw: np.ndarray
    difference: np.ndarray

    def image(self, role: str) -> np.ndarray:
        return getattr(self, role)


@dataclass(frozen=True)
class Selection:
    """A plottable series: one channel (ROI or grid patch) and one entry of its values."""

    channel: int
    value: int  # pixel within a p×p patch; 0 for ROI traces
    label: str


@dataclass(frozen=True)
class Trace:
    """A selection's observed samples, dense reconstruction and baselines around a time."""

    selection: Selection
    observed_times: np.ndarray  # seconds, true sample times (scan offsets included)
    observed_values: np.ndarray
    held_out: np.ndarray  # bool per observed sample: a frame the model never trained on
    times: np.ndarray  # dense times, TRACE_POINTS_PER_FRAME per frame
    values: np.ndarray  # the model's reconstruction at ``times``
    baselines: dict[str, np.ndarray]  # interpolation of the training samples at ``times``


def modelled_recording(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with ΔF/F computed (and held in memory) when it only has raw fluorescence.

    A Suite2p folder opened for viewing holds ``F``/``Fneu``; ``cst-neuro ingest`` would
    add ΔF/F with the default baseline, and so does this, so the widget models the same
    variable a store would hold.
    """
    if "dff" in ds or "grid" in ds or "F" not in ds:
        return ds
    from cst_neuro.preprocess import compute_dff

    out = compute_dff(ds)
    return out.assign(dff=out["dff"].load())


class ScrubSession:
    """A trained model, a Recording and a sub-frame factor K: frames, traces and exports.

    ``model`` and ``checkpoint`` are what ``cst_neuro.checkpoint.load_model`` returns;
    frames and traces of samples the model was validated on (``checkpoint.data.val_frames``,
    when ``ds`` holds the very data it was trained on) are marked as held out. A session
    made by ``from_prior`` names its ``prior`` and the ``blend`` its zero-shot fit chose.
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoint: Checkpoint,
        ds: xr.Dataset,
        *,
        upsample: int = DEFAULT_UPSAMPLE,
        device: str = "cpu",
    ) -> None:
        from cst_neuro.data import data_fingerprint
        from cst_neuro.device import resolve_device

        self.model, self.checkpoint, self.ds = model, checkpoint, ds
        self.prior: str | None = None  # the prior bound zero-shot (``from_prior``)
        self.blend: BlendSummary | None = None  # its blend with linear interpolation
        self.device = resolve_device(device)
        self.reconstructor = Reconstructor(model, checkpoint, ds, device=self.device, cache_size=64)
        self.windows = self.reconstructor.windows
        self.upsample = check_upsample(upsample)
        self.frame_times = np.asarray(ds["time"].values, dtype=np.float64)
        n = self.windows.n_frames
        data = self.reconstructor.checkpoint.data
        assert data is not None  # the Reconstructor checked it
        same_data = data.fingerprint == data_fingerprint(self.windows.values)
        val = data.val_frames
        self.held_out = val if same_data and val.size == n else np.zeros(n, bool)
        if val.any() and not self.held_out.any():
            log.warning(
                "%s: the model was trained on different data than this recording; its "
                "%d held-out frames are not marked in traces",
                ds.attrs.get("source_name", "recording"),
                int(val.sum()),
            )
        self._labels, self._axes = _frame_layout(ds, self.windows.var, self.windows.layout)
        self._lock = threading.Lock()
        self.frame_shape: tuple[int, ...] = self._raw_images(np.array([0])).shape[1:]
        self.limits = _robust_range(self._raw_images(np.linspace(0, n - 1, min(n, 64)).astype(int)))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        ds: xr.Dataset,
        *,
        upsample: int = DEFAULT_UPSAMPLE,
        device: str = "cpu",
    ) -> ScrubSession:
        """Load a model written by ``fit`` and bind it to ``ds`` (ΔF/F added if needed); a
        prior written by ``pretrain`` is bound to ``ds`` zero-shot (``from_prior``)."""
        from cst_neuro.checkpoint import checked_contents, load_model

        if Checkpoint.load(path).kind == "prior":
            return cls.from_prior(ds, path, upsample=upsample, device=device)
        model, checkpoint = load_model(path)
        ds = modelled_recording(ds)
        with checked_contents(path):
            return cls(model, checkpoint, ds, upsample=upsample, device=device)

    @classmethod
    def from_prior(
        cls,
        ds: xr.Dataset,
        prior: str | os.PathLike[str] = DEFAULT,
        *,
        upsample: int = DEFAULT_UPSAMPLE,
        device: str = "cpu",
    ) -> ScrubSession:
        """Bind a calcium prior (``default`` or a prior file) to ``ds`` zero-shot.

        That is ``fit`` with ``max_epochs=0`` (the recording's normalisation, channel
        descriptors and the blend with linear interpolation chosen on validation frames),
        written to a temporary folder that is removed once the model is loaded, so a viewer
        leaves no model file behind.
        """
        from cst_neuro.fit_config import FitConfig
        from cst_neuro.train import fit

        spec = os.fspath(prior)
        if spec == NONE:
            raise InputError(None, "prior = none binds nothing: train a model or load one")
        ds = modelled_recording(ds)
        config = FitConfig(max_epochs=0, prior=spec)
        with tempfile.TemporaryDirectory(prefix="cst-neuro-zero-shot-") as folder:
            result = fit(ds, Path(folder) / "zero-shot.pt", config=config, device=device)
            session = cls.from_checkpoint(result.path, ds, upsample=upsample, device=device)
        session.prior, session.blend = spec, result.blend
        return session

    # ---- time ----------------------------------------------------------------------

    @property
    def fs(self) -> float:
        return self.windows.fs

    @property
    def name(self) -> str:
        return str(self.ds.attrs.get("source_name") or "recording")

    def set_upsample(self, upsample: int) -> None:
        self.upsample = check_upsample(upsample)

    def slider_times(self) -> np.ndarray:
        """The times a slider offers: ``t0 + j / (K·fs)`` over the recording, K per frame."""
        from cst_neuro.reconstruct import output_times

        return output_times(self.ds, upsample=self.upsample)

    def nearest_frame(self, t: float) -> int:
        """Index of the frame nearest to time ``t`` (clipped to the recording)."""
        i = int(np.searchsorted(self.frame_times, t))
        if i > 0 and (
            i == self.frame_times.size or t - self.frame_times[i - 1] <= self.frame_times[i] - t
        ):
            i -= 1
        return int(np.clip(i, 0, self.frame_times.size - 1))

    # ---- frames --------------------------------------------------------------------

    def frames_at(self, t: float) -> Frames:
        """Reconstruction at the exact time ``t``, the nearest frame, and their difference."""
        t = float(t)
        with self._lock:
            values = self.reconstructor.predict(np.array([t]))
        recon = self._render(values)[0]
        frame = self.nearest_frame(t)
        raw = self._raw_images(np.array([frame]))[0]
        return Frames(t, frame, recon, raw, recon - raw)

    def _raw_images(self, frames: np.ndarray) -> np.ndarray:
        """Observed whole frames as (T, *frame_shape) images, in the recording's units."""
        values = np.asarray(self.windows.values.isel(time=frames).values, dtype=np.float32)
        return self._render(values)

    def _render(self, values: np.ndarray) -> np.ndarray:
        """(T, C, V) channel values → (T, *frame_shape) images."""
        image = self.reconstructor.as_image(values).astype(np.float32, copy=False)
        if self._labels is None:
            return image
        padded = np.concatenate([image, np.full((image.shape[0], 1), np.nan, np.float32)], 1)
        return padded[:, self._labels]  # label 0 (background) → index -1 → NaN

    # ---- selection and traces ------------------------------------------------------

    def channel_at(self, index: tuple[int, ...]) -> Selection | None:
        """The ROI or grid pixel an image pixel shows (None for background or outside)."""
        if len(index) != len(self.frame_shape) or any(
            not 0 <= i < s for i, s in zip(index, self.frame_shape, strict=True)
        ):
            return None
        if self._labels is not None:
            channel = int(self._labels[tuple(index)])
            return None if channel < 0 else self.roi_selection(channel)
        y, x = index
        assert self.windows.grid_shape is not None  # no labels: a grid, so patches
        p, nx = self.windows.patch, self.windows.grid_shape[1]
        return Selection((y // p) * nx + x // p, (y % p) * p + x % p, f"pixel (y {y}, x {x})")

    def roi_selection(self, channel: int) -> Selection:
        """The selection of ROI number ``channel`` (its position along ``roi``)."""
        n = self.windows.n_channels
        if self._labels is None or not 0 <= channel < n:
            raise InputError(self.name, f"no ROI at position {channel} (the model has {n} ROIs)")
        roi = self.ds["roi"].values[channel] if "roi" in self.ds.coords else channel
        return Selection(channel, 0, f"ROI {roi}")

    def trace(self, selection: Selection, around: float, n_frames: int = TRACE_FRAMES) -> Trace:
        """Samples, reconstruction and baselines of ``selection`` over frames around a time."""
        from scipy.interpolate import PchipInterpolator

        c, v = selection.channel, selection.value
        n = self.frame_times.size
        lo = int(np.clip(self.nearest_frame(around) - n_frames // 2, 0, max(n - n_frames, 0)))
        hi = min(n - 1, lo + n_frames)
        frames = np.arange(lo, hi + 1)
        offset = self.windows.offsets_frames[c] / self.fs
        values = np.asarray(self.windows.values.isel(time=frames, channel=c, value=v).values)
        finite = np.isfinite(values)
        obs_t = self.frame_times[frames][finite] + offset
        obs_v = values[finite].astype(np.float64)
        held = self.held_out[frames][finite]
        n_dense = (hi - lo) * TRACE_POINTS_PER_FRAME + 1  # exact ends: samples lo and hi
        times = np.linspace(self.frame_times[lo], self.frame_times[hi], n_dense) + offset
        dense = np.empty(times.size, np.float32)
        per_frame = TRACE_POINTS_PER_FRAME  # the lock is held for one frame's times at a time
        for s in range(0, times.size, per_frame):
            with self._lock:
                pred = self.reconstructor.predict(times[s : s + per_frame], np.array([c]))
            dense[s : s + per_frame] = pred[:, 0, v]
        baselines: dict[str, np.ndarray] = {}
        train_t, train_v = obs_t[~held], obs_v[~held]
        if train_t.size >= 2:
            baselines["linear"] = np.interp(times, train_t, train_v, left=np.nan, right=np.nan)
            baselines["PCHIP"] = PchipInterpolator(train_t, train_v, extrapolate=False)(times)
        return Trace(selection, obs_t, obs_v, held, times, dense, baselines)

    # ---- exports -------------------------------------------------------------------

    def _own_reconstructor(self) -> Reconstructor:
        """A reconstructor with caches of its own (exports run beside the viewer's queries)."""
        return Reconstructor(self.model, self.checkpoint, self.ds, device=self.device)

    def export_reconstruction(
        self, path: str | os.PathLike[str], *, overwrite: bool = False
    ) -> Path:
        """Write the reconstruction at K× the frame rate to a zarr store (atomically)."""
        import dask

        from cst_neuro.reconstruct import reconstruct
        from cst_neuro.store import check_writable, write_recording

        check_writable(path, overwrite=overwrite)
        out = reconstruct(self._own_reconstructor(), self.ds, upsample=self.upsample)
        # blocks one after another: a reconstructor's context cache is not thread-safe
        with dask.config.set(scheduler="synchronous"):
            return write_recording(out, path, overwrite=overwrite)

    def export_movie(
        self,
        path: str | os.PathLike[str],
        start: float,
        stop: float,
        *,
        overwrite: bool = False,
    ) -> Path:
        """Write the slider's times in [start, stop] as an ImageJ TIFF movie (TCYX float32).

        Channels: reconstruction, nearest observed frame, difference; the frame interval is
        1 / (K·fs), so ImageJ/Fiji and napari play it at the reconstruction's rate.
        """
        import tifffile

        path = Path(path)
        times = self.slider_times()
        lo, hi = min(start, stop), max(start, stop)
        times = times[(times >= lo - 1e-9) & (times <= hi + 1e-9)]
        if times.size == 0:
            raise InputError(None, f"no slider time lies in {lo:g}..{hi:g} s")
        if len(self.frame_shape) != 2:
            raise InputError(self.name, f"a movie needs (y, x) frames, not {self.frame_shape}")
        path = check_output(path, MOVIE, overwrite=overwrite)
        rec = self._own_reconstructor()

        def pages() -> Any:
            for s in range(0, times.size, MOVIE_BLOCK):
                block = times[s : s + MOVIE_BLOCK]
                recon = self._render(rec.predict(block))
                raw = self._raw_images(np.array([self.nearest_frame(t) for t in block]))
                for r, o in zip(recon, raw, strict=True):
                    yield from (r, o, r - o)

        with atomic_file(path) as tmp:
            tifffile.imwrite(
                tmp,
                pages(),
                shape=(times.size, len(ROLES), *self.frame_shape),
                dtype=np.float32,
                imagej=True,
                metadata={
                    "axes": "TCYX",
                    "finterval": 1.0 / (self.upsample * self.fs),
                    "Labels": [f"{role} {t:.4f} s" for t in times for role in ROLES],
                    MARK_KEY: MOVIE_MARK,
                },
            )
        return path


def check_upsample(upsample: Any) -> int:
    """K as a whole number >= 1, else InputError."""
    if isinstance(upsample, bool) or not isinstance(upsample, int | np.integer) or upsample < 1:
        raise InputError(
            None, f"the sub-frame factor K must be a whole number >= 1, not {upsample!r}"
        )
    return int(upsample)


def scrub_layers(session: ScrubSession) -> tuple[list[LayerData], dict[str, np.ndarray]]:
    """The three scrubbing layers and the frame buffer behind each (keyed by role).

    Each layer is (slider time, *frame) with time scale 1 / (K·fs) and translate t0, so a
    viewer's time slider offers K positions per frame and its point is a time in seconds.
    Every time step is a read-only view of the role's one buffer (zero stride in time):
    writing ``frames_at(t)`` into the buffers and refreshing the layers shows time t.
    Raw and difference sit to the right of the reconstruction, in that order.
    """
    n_times = session.slider_times().size
    scale, translate, labels, units = session._axes
    width = session.frame_shape[-1] * scale[-1]
    gap = max(2.0 * scale[-1], 0.04 * width)
    lo, hi = session.limits
    half = (hi - lo) / 2
    K = session.upsample
    layers, buffers = [], {}
    for i, role in enumerate(ROLES):
        buffer = np.full(session.frame_shape, np.nan, np.float32)
        data = np.broadcast_to(buffer, (n_times, *session.frame_shape))
        shift = [0.0] * len(translate)
        shift[-1] = i * (width + gap)
        kwargs = {
            "name": f"{session.name} {'nearest frame' if role == 'raw' else role}",
            "scale": (1.0 / (K * session.fs), *scale),
            "translate": (float(session.frame_times[0]), *np.add(translate, shift)),
            "axis_labels": ("time", *labels),
            "units": ("s", *units),
            "colormap": "coolwarm" if role == "difference" else "viridis",
            "contrast_limits": (-half, half) if role == "difference" else (lo, hi),
            "metadata": {"cst_scrub": role, "variable": session.windows.var, "upsample": K},
        }
        layers.append((data, kwargs, "image"))
        buffers[role] = buffer
    return layers, buffers


# ---- helpers -------------------------------------------------------------------------


Axes = tuple[list[float], list[float], list[str], list[str]]  # scale, translate, labels, units


def _frame_layout(ds: xr.Dataset, var: str, layout: str) -> tuple[np.ndarray | None, Axes]:
    """(channel index of each pixel or None for grids, a frame's spatial axes).

    Grids keep the reader's world coordinates (``cst_neuro.layers.time_series_layer``).
    ROI traces are painted into the footprints' label image, the very one the reader's
    labels layer shows (``roi_labels_layer``; -1 marks background), or, without
    footprints, into a one-row strip with one pixel per ROI.
    """
    from cst_neuro.layers import roi_labels_layer, time_series_layer

    layer = time_series_layer(ds, var) if layout == "grid" else roi_labels_layer(ds)
    if layer is None and layout == "grid":
        raise InputError(ds.attrs.get("source_name"), f"{var} is not a (time, y, x) grid")
    if layer is None:
        strip = np.arange(ds.sizes["roi"], dtype=np.int64)[None, :]
        return strip, ([1.0, 1.0], [0.0, 0.0], ["roi row", "roi"], ["", ""])
    data, kw = layer[0], layer[1]
    skip = 1 if layout == "grid" else 0  # the grid layer's time axis
    scale, translate, names, units = (
        list(kw[k][skip:]) for k in ("scale", "translate", "axis_labels", "units")
    )
    labels = None if layout == "grid" else np.asarray(data, np.int64) - 1
    return labels, (scale, translate, names, units)


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits: the 1st and 99th percentiles of the finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)
