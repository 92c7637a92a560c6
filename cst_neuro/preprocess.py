"""ΔF/F: neuropil correction, a baseline F0 and a guarded ratio, lazily over ROI blocks.

This module owns the step from raw fluorescence (``F``, ``Fneu``) to ``dff`` in a
Recording (see ``cst_neuro.schema``). It follows Suite2p's conventions where they exist
(``suite2p.extraction.dcnv.preprocess`` and the ``baseline``, ``win_baseline``,
``sig_baseline``, ``prctile_baseline``, ``neucoeff`` settings):

- neuropil correction ``Fc = F - r * Fneu`` (Suite2p's ``neucoeff``, default 0.7);
- ``"maximin"``: Gaussian filter along time (σ = ``sig_baseline`` frames, truncated at
  4σ like ``scipy.ndimage.gaussian_filter1d``), then a running minimum, then a running
  maximum, both over ``win = int(win_baseline * fs)`` frames, centred like scipy's
  ``minimum_filter1d`` (frames ``i - win//2 .. i - win//2 + win - 1``);
- ``"percentile"``: a running percentile over the same window, defined exactly as
  ``scipy.ndimage.percentile_filter`` (and CaImAn's ``detrend_df_f``): the value of rank
  ``int(win * p / 100)`` (0-based, ``win - 1`` for p = 100) of the sorted window;
- ``"prctile"``: one percentile of the whole trace per ROI (Suite2p's
  ``constant_prctile``: ``np.percentile``, linear interpolation, NaN ignored);
- ``"none"``: the trace already is ΔF/F, ``dff = Fc``.

Boundaries: every running filter extends the trace by mirror reflection including the
edge sample (``d c b a | a b c d | d c b a``), scipy.ndimage's default ``"reflect"``
mode that Suite2p relies on; it repeats for windows longer than the trace.

Array convention of the numpy building blocks: time is the LAST axis, i.e. (roi, time)
like Suite2p's ``F.npy``, or a single trace (time,). ``compute_dff`` takes the Recording's
(time, roi) layout and transposes views, never data.

Missing samples: NaN and ±inf inputs are missing. For filtering they are filled by linear
interpolation between the nearest finite samples (constant beyond the first/last one) so
a gap never smears over the trace; the output is NaN exactly where ``Fc`` was missing. A
ROI with no finite sample gets an all-NaN baseline and ΔF/F.

Guard: ``dff = (Fc - F0) / max(F0, floor)`` with ``floor = guard_fraction * scale`` and
``scale`` the ROI's mean |F| over finite samples (raw ``F``, before neuropil subtraction;
1.0 for a ROI whose F is all zero or missing). Samples where ``F0 < floor`` (baseline
near zero or negative, e.g. over-subtracted neuropil) are counted per ROI in
``dff_guarded(roi)``; no division by zero happens, and the ratio saturates at ±float32
max instead of overflowing to inf.

Speed (per ROI of T frames, window w; vectorised numpy/scipy, no BLAS or thread pools,
so dask's threads scale): Gaussian by overlap-save FFT (O(T log N), N = 1024 for σ = 10),
running min/max by doubling (``log2 w`` passes, O(T log w)); maximin ΔF/F costs about
0.6 ms of one core per 100,000-frame ROI. The running percentile uses scipy's 1-D rank
filter (O(T log w), about 3.5 ms per 100,000-frame ROI) which holds the GIL, so only
dask's process-based schedulers run it in parallel.

A little over 500 lines: the public numpy building blocks and the Recording-level entry
point share one workspace and one set of checks (``DffSettings``), kept together.
"""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from numpy.lib.stride_tricks import as_strided
from pydantic import Field
from scipy import fft as sp_fft
from scipy import ndimage

from cst_neuro.errors import InputError
from cst_neuro.io import npy
from cst_neuro.schema import dumps_params, finite_frames
from cst_neuro.validation import NonNegativeReal, PositiveReal, validated

logger = logging.getLogger(__name__)

Baseline = Literal["maximin", "percentile", "prctile", "none"]
BASELINES: tuple[str, ...] = typing.get_args(Baseline)
SUITE2P_NEUROPIL = 0.7  # Suite2p's default neucoeff, used when the Recording has none
GUARD_FRACTION = 0.01  # F0 below 1 % of the ROI's mean |F| counts as "near zero"
GAUSS_TRUNCATE = 4.0  # as scipy.ndimage.gaussian_filter1d
_ROW_GROUP = 32  # ROIs copied together into time-contiguous rows (cache-friendly)
_F32_MAX = float(np.finfo(np.float32).max)
MAX_WINDOW = 2**28  # frames of a running baseline window (2 GiB of work space)


@dataclass(frozen=True)
class DffSettings:
    """The ΔF/F parameters (Suite2p's names), checked before any work (``validation``)."""

    baseline: Baseline = "maximin"
    neuropil: NonNegativeReal | None = None  # the neuropil coefficient r
    win_baseline: PositiveReal = 60.0  # seconds
    sig_baseline: NonNegativeReal = 10.0  # frames
    prctile_baseline: Annotated[NonNegativeReal, Field(le=100.0)] = 8.0
    guard_fraction: PositiveReal = GUARD_FRACTION
    fs: PositiveReal | None = None  # Hz


def _settings(path: str | None, **given: Any) -> DffSettings:
    return validated(DffSettings, given, source=path)


# ---------------------------------------------------------------------------------------
# per-trace kernels (1-D float32, time contiguous), writing into reusable scratch buffers


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights: radius int(4σ + 0.5), normalised."""
    radius = int(GAUSS_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class _Workspace:
    """Scratch buffers for traces of T frames, reused for every ROI of a block.

    Fresh 100,000-frame temporaries for each trace would each be page-faulted in by the
    OS (about half the run time); reusing these keeps the per-trace work in cache.

    The Gaussian (σ frames, 2r + 1 taps, r = int(4σ + 0.5)) is an FIR convolution done by
    overlap-save FFT (scipy.fft, single-threaded: no BLAS/OpenMP pools to oversubscribe
    under dask's threads): the reflected trace is cut into rows of N frames overlapping by
    2r, each row is convolved circularly, and its last N - 2r outputs are exact. O(T log N)
    per trace, ~0.25 ms for 100,000 frames; float32 rounding ~1e-7 of the trace's scale.
    """

    def __init__(self, T: int, win: int, sigma: float, group: int = 1) -> None:
        self.T = T
        f32 = np.float32
        self.f_rows, self.n_rows = np.empty((group, T), f32), np.empty((group, T), f32)
        self.ping, self.pong = np.empty(T + win, f32), np.empty(T + win, f32)
        self.f0 = np.empty(T, f32)
        self.radius = r = int(GAUSS_TRUNCATE * sigma + 0.5) if sigma > 0 else 0
        self.N = self.V = 0
        if r:
            self.N = N = max(1024, 1 << math.ceil(math.log2(16 * r)))  # FFT length
            self.V = V = N - 2 * r  # exact outputs per row
            taps = np.zeros(N)
            taps[: 2 * r + 1] = _gaussian_kernel(sigma)
            self.spectrum = sp_fft.rfft(taps).astype(np.complex64)
            n_rows = -(-T // V)
            self.g_pad = np.zeros(n_rows * V + 2 * r, f32)
            self.g_rows = np.empty((n_rows, N), f32)

    def gaussian(self, x: np.ndarray) -> np.ndarray:
        """Gaussian-filtered ``x`` (reflect boundaries), float32."""
        r, N, V, T = self.radius, self.N, self.V, self.T
        if r == 0:
            return x
        _reflect_pad(x, r, r, out=self.g_pad[: T + 2 * r])
        n_rows = self.g_rows.shape[0]
        np.copyto(self.g_rows, as_strided(self.g_pad, (n_rows, N), (4 * V, 4), writeable=False))
        spectrum = sp_fft.rfft(self.g_rows, axis=1)
        spectrum *= self.spectrum
        rows = sp_fft.irfft(spectrum, n=N, axis=1, overwrite_x=True)  # (n_rows, N)
        return rows[:, 2 * r :].reshape(-1)[:T]  # output i = Σ_d k[d] padded[i + d]

    def running_extreme(
        self, x: np.ndarray, win: int, fn: Callable[..., np.ndarray], out: np.ndarray
    ) -> np.ndarray:
        """Running ``fn`` (np.minimum / np.maximum) over ``win`` frames, scipy's centring.

        Doubling: after k passes ``a[i] = fn(x[i : i + 2**k])``, and two overlapping powers
        of two cover any window: ``log2(win)`` vectorised passes, exact.
        """
        T, left = x.size, win // 2
        n = T + win - 1
        a, b = self.ping, self.pong
        _reflect_pad(x, left, win - 1 - left, out=a[:n])
        s = 1
        while 2 * s <= win:
            fn(a[: n - s], a[s:n], out=b[: n - s])
            a, b, n, s = b, a, n - s, 2 * s
        return fn(a[:T], a[win - s : win - s + T], out=out)


def _reflect_pad(x: np.ndarray, left: int, right: int, out: np.ndarray) -> np.ndarray:
    """``x`` extended by scipy.ndimage's "reflect" rule (numpy's "symmetric") into ``out``."""
    T = x.size
    if left > T or right > T:
        out[:] = np.pad(x, (left, right), mode="symmetric")
        return out
    out[left : left + T] = x
    out[:left] = x[:left][::-1]
    out[left + T :] = x[T - right :][::-1]
    return out


def _fill_missing(x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(filled trace, finite mask or None if all finite); (None, mask) if nothing is finite."""
    good = np.isfinite(x)
    if good.all():
        return x, None
    if not good.any():
        return None, good
    idx = np.flatnonzero(good)
    filled = np.interp(np.arange(x.size), idx, x[idx]).astype(np.float32)
    return filled, good


def _baseline_row(
    x: np.ndarray, good: np.ndarray | None, method: str, win: int, prctile: float, work: _Workspace
) -> np.ndarray:
    """F0 of one trace (``work.f0`` or a length-1 array for "prctile").

    ``x`` is filled and finite, ``good`` its finite mask (None: all finite); "prctile"
    uses the finite samples only.
    """
    if method == "maximin":
        low = work.running_extreme(work.gaussian(x), win, np.minimum, out=work.f0)
        return work.running_extreme(low, win, np.maximum, out=work.f0)
    if method == "percentile":
        if win <= x.size:
            return ndimage.percentile_filter(x, prctile, size=win, mode="reflect", output=work.f0)
        # scipy's 1-D rank filter mis-ranks the ends when the window is longer than the
        # trace (repeated reflection); pad by repeated reflection here and filter the middle
        padded = np.pad(x, win, mode="symmetric")
        work.f0[:] = ndimage.percentile_filter(padded, prctile, size=win)[win:-win]
        return work.f0
    values = x if good is None else x[good]
    return np.asarray([np.percentile(values, prctile)], dtype=np.float32)


def _guard_scale(f: np.ndarray) -> float:
    """Mean |F| over the finite samples of one trace; 1.0 when that is zero or undefined."""
    a = np.abs(f)
    total, n = float(a.sum()), a.size
    if not math.isfinite(total):
        a = a[np.isfinite(a)]
        total, n = float(a.sum()), a.size
    scale = total / n if n else 0.0
    return scale if math.isfinite(scale) and scale > 0 else 1.0


# ---------------------------------------------------------------------------------------
# the block kernel shared by the numpy and dask paths


def _dff_rows(
    F: np.ndarray,
    Fneu: np.ndarray | None = None,
    *,
    coefficient: float,
    method: str,
    win: int,
    sigma: float,
    prctile: float,
    guard_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """ΔF/F of (roi, time) traces: returns (dff (roi, time) float32, guarded (roi,) int32).

    ROIs are copied in groups of ``_ROW_GROUP`` into time-contiguous rows, then processed
    one at a time so each trace's temporaries stay in cache. A ROI's result depends only
    on its own samples, so any blocking (numpy or dask) gives bit-identical output.
    """
    n_roi, T = F.shape
    out = np.empty((n_roi, T), dtype=np.float32)
    guarded = np.zeros(n_roi, dtype=np.int32)
    sigma = sigma if method == "maximin" else 0.0
    work = _Workspace(T, win, sigma, group=min(n_roi, _ROW_GROUP))
    neuropil = Fneu if coefficient != 0 else None
    for start in range(0, n_roi, _ROW_GROUP):
        stop = min(n_roi, start + _ROW_GROUP)
        f_rows = _time_rows(F, start, stop, out=work.f_rows)
        fc_rows = f_rows
        if neuropil is not None:
            fc_rows = _time_rows(neuropil, start, stop, out=work.n_rows)
            fc_rows *= -np.float32(coefficient)
            fc_rows += f_rows  # F - r * Fneu
        for i in range(stop - start):
            fc, row = fc_rows[i], out[start + i]
            filled, good = _fill_missing(fc)
            if method == "none":
                row[:] = fc
            elif filled is None:
                row[:] = np.nan
            else:
                floor = np.float32(guard_fraction * _guard_scale(f_rows[i]))
                f0 = _baseline_row(filled, good, method, win, prctile, work)
                low = np.broadcast_to(f0 < floor, fc.shape)
                guarded[start + i] = np.count_nonzero(low if good is None else low & good)
                np.subtract(fc, f0, out=row)
                with np.errstate(over="ignore"):  # saturated by the clip below
                    np.divide(row, np.maximum(f0, floor, out=f0), out=row)
                np.clip(row, -_F32_MAX, _F32_MAX, out=row)
            if good is not None:
                row[~good] = np.nan
    return out, guarded


def _time_rows(A: np.ndarray, start: int, stop: int, out: np.ndarray) -> np.ndarray:
    """Rows ``start:stop`` of a (roi, time) array as C-ordered float32 (a view of ``out``).

    When time is not the contiguous axis (a transposed (time, roi) block) the copy goes
    in tiles of frames, which keeps the transposition in cache (3-4x faster than numpy's
    plain strided copy for 100,000 frames).
    """
    rows, out = A[start:stop], out[: stop - start]
    if rows.strides[-1] == rows.itemsize or rows.shape[-1] <= 1:
        out[...] = rows
        return out
    for t in range(0, rows.shape[-1], 512):
        out[:, t : t + 512] = rows[:, t : t + 512]
    return out


# ---------------------------------------------------------------------------------------
# public numpy building blocks, (roi, time) or (time,)


def neuropil_correct(
    F: np.ndarray, Fneu: np.ndarray | None = None, coefficient: float = SUITE2P_NEUROPIL
) -> np.ndarray:
    """``F - coefficient * Fneu`` in float32; ``F`` unchanged (as float32) without Fneu or r = 0."""
    _settings(None, neuropil=coefficient)
    F = np.asarray(F, dtype=np.float32)
    if Fneu is None or coefficient == 0:
        return F.copy()
    Fneu = np.asarray(Fneu, dtype=np.float32)
    if Fneu.shape != F.shape:
        raise InputError(None, f"Fneu has shape {Fneu.shape} but F has {F.shape}")
    return F - np.float32(coefficient) * Fneu


def baseline_maximin(
    F: np.ndarray, *, fs: float, win_baseline: float = 60.0, sig_baseline: float = 10.0
) -> np.ndarray:
    """Suite2p's maximin baseline of (roi, time) or (time,) traces, float32, same shape.

    Gaussian (σ = ``sig_baseline`` frames; 0 = none), running min, running max over
    ``int(win_baseline * fs)`` frames; reflect boundaries; missing samples interpolated.
    """
    win = _window_frames(
        _settings(None, win_baseline=win_baseline, sig_baseline=sig_baseline, fs=fs), None
    )
    return _map_rows(F, "maximin", win, 0.0, float(sig_baseline))


def baseline_running_percentile(
    F: np.ndarray, *, fs: float, win_baseline: float = 60.0, prctile_baseline: float = 8.0
) -> np.ndarray:
    """Running percentile of (roi, time) or (time,) traces over ``int(win_baseline * fs)``
    frames, float32, same shape: scipy.ndimage.percentile_filter's rank rule, exact.

    O(T log w) per ROI (scipy's 1-D rank filter: about 3.5 ms for 100,000 frames).
    """
    settings = _settings(None, win_baseline=win_baseline, prctile_baseline=prctile_baseline, fs=fs)
    win = _window_frames(settings, None)
    return _map_rows(F, "percentile", win, float(prctile_baseline), 0.0)


def baseline_percentile(F: np.ndarray, *, prctile_baseline: float = 8.0) -> np.ndarray:
    """One percentile (np.percentile, linear) of each whole trace over its finite samples.

    Shape (roi, 1) or (1,) so that it broadcasts against ``F``; NaN for an all-NaN ROI.
    """
    _settings(None, prctile_baseline=prctile_baseline)
    return _map_rows(F, "prctile", 1, float(prctile_baseline), 0.0)


def delta_f_over_f(
    Fc: np.ndarray,
    F0: np.ndarray,
    *,
    scale: np.ndarray | float | None = None,
    guard_fraction: float = GUARD_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Guarded ``(Fc - F0) / max(F0, guard_fraction * scale)`` and the guarded counts.

    ``Fc`` is (roi, time) or (time,); ``F0`` broadcasts to it; ``scale`` is per ROI
    (default: mean |Fc| over finite samples, 1.0 where that is 0). Returns (dff float32,
    number of finite samples with ``F0 < floor`` per ROI, int32). NaN where Fc is missing.
    """
    _settings(None, guard_fraction=guard_fraction)
    Fc = np.asarray(Fc, dtype=np.float32)
    F0 = np.broadcast_to(np.asarray(F0, dtype=np.float32), Fc.shape)
    rows = Fc.reshape(-1, Fc.shape[-1])
    if scale is None:
        scale = np.array([_guard_scale(r) for r in rows])
    floor = (guard_fraction * np.broadcast_to(np.asarray(scale, np.float64), rows.shape[:1]))[
        :, None
    ].astype(np.float32)
    f0 = F0.reshape(rows.shape)
    good = np.isfinite(rows)
    with np.errstate(invalid="ignore", over="ignore"):  # overflow saturates below
        dff = np.clip((rows - f0) / np.maximum(f0, floor), -_F32_MAX, _F32_MAX)
        guarded = np.count_nonzero((f0 < floor) & good, axis=-1).astype(np.int32)
    dff[~good] = np.nan
    return dff.reshape(Fc.shape), guarded.reshape(Fc.shape[:-1])


def _map_rows(F: np.ndarray, method: str, win: int, prctile: float, sigma: float) -> np.ndarray:
    """Baseline of every trace (last axis) of ``F``, missing samples filled first."""
    F = np.asarray(F, dtype=np.float32)
    rows = F.reshape(-1, F.shape[-1])
    out = np.empty((rows.shape[0], 1 if method == "prctile" else rows.shape[1]), np.float32)
    work = _Workspace(rows.shape[1], win, sigma)
    for i, row in enumerate(rows):
        filled, good = _fill_missing(np.ascontiguousarray(row))
        out[i] = (
            np.nan if filled is None else _baseline_row(filled, good, method, win, prctile, work)
        )
    return out.reshape(*F.shape[:-1], out.shape[1])


# ---------------------------------------------------------------------------------------
# the Recording-level entry point


def compute_dff(
    ds: xr.Dataset,
    *,
    baseline: str = "maximin",
    neuropil: float | None = None,
    win_baseline: float = 60.0,
    sig_baseline: float = 10.0,
    prctile_baseline: float = 8.0,
    guard_fraction: float = GUARD_FRACTION,
) -> xr.Dataset:
    """``ds`` with ``dff(time, roi)`` float32 and ``dff_guarded(roi)`` int32 added.

    ``neuropil`` overrides ``ds.attrs['neuropil_coefficient']`` (Suite2p's 0.7, with a
    warning, when neither is given and ``Fneu`` exists). Dask-backed traces stay lazy:
    they are processed in blocks of all frames of ~64 MiB of ROIs (existing blocks of
    all frames are kept), so memory is bounded by a few blocks. Sets attrs
    ``dff_method``, ``dff_params`` (JSON) and ``neuropil_coefficient``. ``valid`` then
    describes the ΔF/F (NaN where F or Fneu is missing), still False on flagged frames.
    """
    path = ds.attrs.get("source_name")
    settings = _settings(
        path, baseline=baseline, neuropil=neuropil, win_baseline=win_baseline,
        sig_baseline=sig_baseline, prctile_baseline=prctile_baseline,
        guard_fraction=guard_fraction,
    )  # fmt: skip
    if "F" not in ds:
        raise InputError(
            path,
            "no raw fluorescence 'F' to compute ΔF/F from (the recording has "
            f"{', '.join(map(str, ds.data_vars)) or 'no variables'})",
        )
    F = ds["F"]
    if set(F.dims) != {"time", "roi"}:
        raise InputError(path, f"'F' must have dims (time, roi), found {F.dims}")
    fs = ds.attrs.get("fs")
    if fs is None:
        raise InputError(path, "the recording has no sampling rate (attrs['fs']); set it first")
    params: dict[str, Any] = {"baseline": baseline, "fs": float(fs)}
    win = 0
    if baseline in ("maximin", "percentile"):
        win = _window_frames(_settings(path, win_baseline=settings.win_baseline, fs=fs), path)
        params.update(win_baseline=float(win_baseline), win_frames=win, boundary="reflect")
    if baseline == "maximin":
        params["sig_baseline"] = float(sig_baseline)
    if baseline in ("percentile", "prctile"):
        params["prctile_baseline"] = float(prctile_baseline)
    coefficient = _neuropil_coefficient(ds, neuropil, path)
    params["neuropil_coefficient"] = coefficient
    if baseline != "none":
        params.update(
            guard="denominator floored",
            guard_fraction=float(guard_fraction),
            guard_scale="mean |F| per ROI over finite samples",
        )
    params["missing"] = "interpolated for filtering; NaN in dff"

    Fneu = ds["Fneu"] if coefficient != 0 else None
    arrays = [F] if Fneu is None else [F, Fneu.transpose(*F.dims)]
    if any(a.chunks is not None for a in arrays):
        chunks = _roi_blocks(F)
        arrays = [a.chunk(chunks) for a in arrays]
    kwargs = dict(
        coefficient=coefficient,
        method=baseline,
        win=win,
        sigma=float(sig_baseline),
        prctile=float(prctile_baseline),
        guard_fraction=float(guard_fraction),
    )
    dff, guarded = xr.apply_ufunc(
        _dff_rows,
        *arrays,
        input_core_dims=[["time"]] * len(arrays),
        output_core_dims=[["time"], []],
        dask="parallelized",
        output_dtypes=[np.float32, np.int32],
        kwargs=kwargs,
        keep_attrs=False,
    )
    dff = dff.transpose("time", "roi")
    dff.attrs = {"long_name": "ΔF/F", "units": "1"}
    guarded.attrs = {"long_name": "samples whose ΔF/F denominator was floored by the guard"}
    out = ds.assign(dff=dff, dff_guarded=guarded)
    # ``valid`` describes what a model reads: the ΔF/F (NaN where F or Fneu is), and any
    # frames the source flagged (Suite2p badframes) stay invalid
    valid = finite_frames(out)
    out["valid"] = ds["valid"] & valid if "valid" in ds else valid
    out.attrs = {
        **ds.attrs,
        "dff_method": baseline,
        "dff_params": dumps_params(params),
        "neuropil_coefficient": coefficient,
    }
    return out


def _roi_blocks(F: xr.DataArray) -> dict[str, int | tuple[int, ...]]:
    """Chunks {time: all, roi: block}: keep existing all-frame ROI chunks if not too big."""
    n_time = F.sizes["time"]
    block = npy.rows_per_chunk(4 * n_time, F.sizes["roi"])
    if F.chunks is not None:
        chunks = dict(zip(F.dims, F.chunks, strict=True))
        if len(chunks["time"]) == 1 and max(chunks["roi"]) * 4 * n_time <= 2 * npy.CHUNK_BYTES:
            return {"time": -1, "roi": chunks["roi"]}
    return {"time": -1, "roi": block}


def _neuropil_coefficient(ds: xr.Dataset, override: float | None, path: str | None) -> float:
    if override is not None:
        if override != 0 and "Fneu" not in ds:
            raise InputError(
                path, f"neuropil coefficient {override} given but the recording has no Fneu"
            )
        return float(override)
    if "Fneu" not in ds:
        return 0.0
    value = ds.attrs.get("neuropil_coefficient")
    if value is None:
        logger.warning(
            "%s: no neuropil coefficient in attrs; using Suite2p's default %s",
            path,
            SUITE2P_NEUROPIL,
        )
        return SUITE2P_NEUROPIL
    _settings(path, neuropil=value)  # attrs['neuropil_coefficient'] of a file
    return float(value)


def _window_frames(settings: DffSettings, path: str | None) -> int:
    """Suite2p's baseline window in frames: ``int(win_baseline * fs)``, at least one."""
    fs, win_baseline = settings.fs, settings.win_baseline
    if fs is None:
        raise InputError(path, "a running baseline needs the sampling rate fs")
    span = win_baseline * fs
    if not span <= MAX_WINDOW:  # inf too: checked before any work space is allocated
        raise InputError(
            path, f"the {win_baseline:g} s baseline window at {fs:g} Hz spans {span:.3g} "
            f"frames, whose work space would need {8 * span / 2**30:.3g} GiB; is the "
            "sampling rate right?"
        )  # fmt: skip
    win = int(span)  # Suite2p: win = int(win_baseline * fs)
    if win < 1:
        raise InputError(
            path, f"win_baseline {win_baseline} s is shorter than one frame at {fs} Hz"
        )
    return win
