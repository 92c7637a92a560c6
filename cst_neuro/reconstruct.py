"""Querying a trained model: predictions at any real-valued times, and whole reconstructions.

``Reconstructor`` binds a model to a Recording. Windows of frames overlap by half; a
query time τ (seconds) is answered by the windows that hold it, blended with weights
sin²(π u), u the position of τ in the window: they sum to one, vanish with their
derivative at a window's ends, and so join the windows' continuous predictions into one
continuous curve (a single window per frame interval would jump at every frame, where
the window changes, by about as much as the signal moves in a frame). In mode ``cst``
each window's encoded context is cached (least recently used, `Mode.context`), so each new
sub-frame time costs one decoder pass per window (two). Times outside the recording use the first
or last window (extrapolation: forecasting).
``reconstruct`` evaluates a model over a recording at K× the frame rate (or given times)
as a lazy xarray Dataset that ``cst_neuro.store.write_recording`` streams to zarr in
blocks of time, so long recordings never sit in memory.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from cst_neuro.checkpoint import Checkpoint, checked_contents, load_model
from cst_neuro.data import ChannelWindows, channel_groups, data_fingerprint
from cst_neuro.device import autocast
from cst_neuro.errors import InputError
from cst_neuro.fit_config import MEMORY_BUDGET
from cst_neuro.schema import new_recording

log = logging.getLogger(__name__)

BLOCK_TIMES = 1024  # output times computed per block when reconstructing


class Reconstructor:
    """A trained model bound to a Recording: ``predict(times)`` at any real-valued times."""

    def __init__(
        self,
        model: nn.Module,
        checkpoint: Checkpoint,
        ds: xr.Dataset,
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        cache_size: int = 16,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        data, fit_config = checkpoint.data, checkpoint.fit_config
        if data is None or checkpoint.normalizer is None:
            raise InputError(None, "a model bound to no recording cannot reconstruct one")
        if data.var not in ds:
            raise InputError(
                ds.attrs.get("source_name"),
                f"model was trained on {data.var!r}, which this recording does not have",
            )
        self.checkpoint = checkpoint
        self.mode = checkpoint.spec
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.cast = autocast(self.device, precision)
        self.windows = ChannelWindows(
            ds,
            var=data.var,
            window=fit_config.window,
            patch=data.patch,
            allowed=np.asarray(ds["valid"].values, bool),
            normalizer=checkpoint.normalizer,
            features=checkpoint.features,
            frames_per_unit=self.mode.frames_per_unit(fit_config.window),
            memory_budget=memory_budget,
        )
        if self.windows.n_channels != data.n_channels:
            raise InputError(
                ds.attrs.get("source_name"),
                f"model was trained on {data.n_channels} channels ({data.var}), this "
                f"recording has {self.windows.n_channels}",
            )
        self.var = data.var
        self.groups = channel_groups(
            self.windows.n_channels, self.windows.window, fit_config.max_tokens
        )
        self._cache: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._cache_size = cache_size
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the caches are shared by dask's threads in reconstruct

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], ds: xr.Dataset, **kwargs: Any
    ) -> Reconstructor:
        model, checkpoint = load_model(path)
        with checked_contents(path):
            try:
                bound = cls(model, checkpoint, ds, **kwargs)
            except InputError as e:  # the model and this recording do not fit together
                where = f" {e.path}" if e.path else ""
                raise InputError(path, f"does not fit the recording{where}: {e.problem}") from None
        data = checkpoint.data
        if data is not None and data.fingerprint != data_fingerprint(bound.windows.values):
            log.warning(
                "%s was fitted to %s, not to this recording (%s): its normalisation and "
                "channel descriptors are that recording's; fit a model to this one (a "
                "zero-shot fit, --max-epochs 0, takes seconds) unless that is what you want",
                path,
                data.source_name or "another recording",
                ds.attrs.get("source_name", "no name"),
            )
        return bound

    def window_weights(self, frames: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(window start, rows, blend weights) for fractional frame positions.

        Windows start every half window (and the last one at the end of the recording).
        Each position gets weight sin²(π u) from each window holding it, u ∈ [0, 1] its
        place in the window; the first window weighs 1 on its first half and the last on
        its second, so the ends of the recording, and times beyond them, are covered.
        Scrubbing within half a window reuses the same two encoded contexts.
        """
        w, n = self.windows.window, self.windows.n_frames
        starts = np.union1d(np.arange(0, n - w + 1, max(1, w // 2)), [n - w])
        last = starts.size - 1
        newest = np.clip(np.searchsorted(starts, frames, side="right") - 1, 0, last)
        candidates = np.clip(newest[:, None] - np.arange(3), 0, last)  # (T, 3): covers a window
        u = (frames[:, None] - starts[candidates]) / max(w - 1, 1)
        weight = np.where((u > 0) & (u < 1), np.sin(np.pi * u) ** 2, 0.0)  # 0 at the ends
        weight[(candidates == 0) & (u < 0.5)] = 1.0
        weight[(candidates == last) & (u > 0.5)] = 1.0
        weight[:, 1:][candidates[:, 1:] == candidates[:, :-1]] = 0.0  # clipped repeats
        blend = []
        for k in np.unique(candidates[weight > 0]):
            rows, slot = np.nonzero((candidates == k) & (weight > 0))
            blend.append((int(starts[k]), rows, weight[rows, slot]))
        return blend

    def context(self, start: int, group: int) -> Any:
        """What the mode predicts from for a window's channel group (`Mode.context`)."""
        return _remember(
            self._cache, (start, group), self._cache_size, lambda: self._encode(start, group)
        )

    def _encode(self, start: int, group: int) -> Any:
        block = _remember(self._blocks, start, self._cache_size, lambda: self.windows.read(start))
        keep = self.windows.observed(block)
        mask = np.zeros_like(keep)
        mask[:, self.groups[group]] = True
        tokens = self.windows.batch([self.windows.tokens(block, start, keep & mask)])
        if not tokens.mask.any():
            raise InputError(None, f"no observed samples in frames {start}..{start + len(keep)}")
        with torch.no_grad(), self.cast:
            return self.mode.context(self.model, tokens.to(self.device))

    @torch.no_grad()
    def predict(self, times: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        """Predictions (T, C, V) in the recording's units at absolute times (seconds).

        Thread-safe: calls from several threads take turns (torch already runs each on
        every core), so the window caches stay consistent.
        """
        with self._lock:
            return self._predict(times, channels)

    def _predict(self, times: np.ndarray, channels: np.ndarray | None) -> np.ndarray:
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        if not np.all(np.isfinite(times)):
            raise InputError(None, "query times must be finite")
        w = self.windows
        chans = np.arange(w.n_channels) if channels is None else np.asarray(channels)
        frames = (times - w.t0) * w.fs  # fractional frame positions
        out = np.zeros((times.size, chans.size, w.value_dim), np.float32)
        total = np.zeros(times.size, np.float32)
        for start, rows, weight in self.window_weights(frames):
            for g, group in enumerate(self.groups):
                cols = np.flatnonzero(np.isin(chans, group))
                if cols.size:
                    pred = self._predict_window(start, g, frames[rows], chans[cols])
                    out[np.ix_(rows, cols)] += weight[:, None, None] * pred
            total[rows] += weight
        out /= total[:, None, None]
        return out * w.normalizer.std[chans] + w.normalizer.mean[chans]

    def _predict_window(
        self, start: int, group: int, frames: np.ndarray, chans: np.ndarray
    ) -> np.ndarray:
        """Normalised predictions (T, C, V) for frames × channels from one window."""
        w = self.windows
        cc, ff = np.meshgrid(chans, frames, indexing="ij")  # (C, T): a channel's queries together
        local = ff.ravel() - w.offsets_frames[cc.ravel()]  # sample time of each channel
        coords = torch.from_numpy(w.coords(local, cc.ravel(), start))[None].to(self.device)
        ids = torch.from_numpy(cc.ravel().astype(np.int64))[None].to(self.device)
        context = self.context(start, group)
        with self.cast:
            pred = self.mode.predict(self.model, context, coords, ids)
        out = pred[0].float().cpu().numpy().reshape(cc.shape[0], cc.shape[1], -1)
        return out.transpose(1, 0, 2)

    def as_image(self, values: np.ndarray) -> np.ndarray:
        """(T, patches, p²) grid predictions → (T, Y, X) images; traces pass as (T, C)."""
        if self.windows.layout != "grid":
            return values[..., 0]
        p = self.windows.patch
        assert self.windows.grid_shape is not None  # a grid has one
        ny, nx = self.windows.grid_shape
        t = values.shape[0]
        img = values.reshape(t, ny, nx, p, p).transpose(0, 1, 3, 2, 4)  # (T, ny, p, nx, p)
        return img.reshape(t, ny * p, nx * p)


def _remember(cache: OrderedDict, key: Any, size: int, make: Any) -> Any:
    """Least-recently-used lookup: ``cache[key]``, computed by ``make()`` when absent."""
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = make()
        if len(cache) > size:
            cache.popitem(last=False)
    return cache[key]


def _finite_images(rec: Reconstructor, times: np.ndarray, bar: Any = None) -> np.ndarray:
    """Images of predictions at ``times``; InputError rather than NaN where a value was asked.
    A progress ``bar`` counts the values computed."""
    images = rec.as_image(rec.predict(times))
    if not np.isfinite(images).all():
        raise InputError(
            None,
            f"the model gives no finite value between {times[0]:g} and {times[-1]:g} s "
            "(a window without observed samples?); nothing was written",
        )
    if bar is not None:
        with bar.get_lock():  # blocks finish on dask's threads
            bar.update(images.size)
            if bar.n >= bar.total:
                bar.close()
    return images


def output_times(
    ds: xr.Dataset, *, upsample: int | None = None, times: np.ndarray | None = None
) -> np.ndarray:
    """``t0 + i/(K·fs)`` over the recording's span, or the given times (sorted, unique).

    Checked before anything is computed: at most `MAX_OUTPUT_TIMES` times, and none further
    from the recording than its own duration (beyond, a model only extrapolates its last
    window; a time of 1e300 s would give NaN everywhere).
    """
    if (upsample is None) == (times is None):
        raise InputError(None, "give exactly one of upsample=K or times=...")
    t = np.asarray(ds["time"].values, np.float64)
    if upsample is not None:
        if int(upsample) < 1:
            raise InputError(None, f"upsample must be a whole number >= 1, got {upsample}")
        n = (t.size - 1) * int(upsample) + 1
        _check_count(n, f"--upsample {upsample} of {t.size} frames")
        return float(t[0]) + np.arange(n) / (int(upsample) * float(ds.attrs["fs"]))
    times = np.asarray(times, dtype=np.float64).ravel()
    if times.size == 0 or not np.all(np.isfinite(times)):
        raise InputError(None, "times must be a non-empty array of finite seconds")
    if np.any(np.diff(times) <= 0):
        raise InputError(None, "times must be strictly increasing")
    _check_count(times.size, "the query")
    duration = max(float(t[-1] - t[0]), 1.0 / float(ds.attrs["fs"]))
    low, high = float(t[0]) - duration, float(t[-1]) + duration
    outside = (times < low) | (times > high)
    if outside.any():
        first = float(times[np.argmax(outside)])
        raise InputError(
            None,
            f"time {first:g} s is further from the recording ({t[0]:g} to {t[-1]:g} s) than "
            f"its duration; query times must lie in [{low:g}, {high:g}] s",
        )
    return times


MAX_OUTPUT_TIMES = 10**8  # times one reconstruction may ask for (3.9 days at 300 Hz)


def _check_count(n: int, what: str) -> None:
    if n > MAX_OUTPUT_TIMES:
        raise InputError(
            None,
            f"{what} asks for {n:,} output times (at least {n * 8 / 2**30:,.1f} GiB for the "
            f"times alone); at most {MAX_OUTPUT_TIMES:,}",
        )


def read_times(path: str | os.PathLike[str], ds: xr.Dataset) -> np.ndarray:
    """Query times (seconds) for ``ds`` from a 1-D numeric ``.npy``, checked
    (`output_times`); InputError naming the file."""
    from cst_neuro.io.npy import open_npy

    arr = open_npy(path)
    if arr.ndim != 1:
        raise InputError(path, f"expected a 1-D array of times in seconds, found {arr.shape}")
    try:
        return output_times(ds, times=np.asarray(arr[:], dtype=np.float64))
    except InputError as e:
        raise InputError(path, e.problem) from None


def reconstruct(
    reconstructor: Reconstructor,
    ds: xr.Dataset,
    *,
    upsample: int | None = None,
    times: np.ndarray | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """A lazy Recording of the model's predictions at ``times`` (or K× the frame rate).

    With ``progress``, a bar counts the values as the blocks are computed (when the
    Dataset is written): blocks are equal in size and cost, so its average rate since the
    start gives a steady estimate of the time left.
    """
    import dask
    import dask.array as da

    out_t = output_times(ds, upsample=upsample, times=times)
    span = ds["time"].values[[0, -1]]
    if out_t[0] < span[0] or out_t[-1] > span[-1]:
        log.warning("some query times lie outside the recording: those are extrapolations")
    rec = reconstructor
    first = rec.as_image(rec.predict(out_t[:1]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = out_t.size * int(np.prod(first.shape[1:]))
        bar = tqdm(total=total, desc="reconstruct", unit="value", unit_scale=True, smoothing=0)
    blocks = []
    for s in range(0, out_t.size, BLOCK_TIMES):
        chunk = out_t[s : s + BLOCK_TIMES]
        block = dask.delayed(_finite_images)(rec, chunk, bar)
        blocks.append(da.from_delayed(block, (chunk.size, *first.shape[1:]), np.float32))
    values = da.concatenate(blocks, axis=0)
    if upsample is not None:
        fs = float(ds.attrs["fs"]) * upsample
    else:  # arbitrary times: their mean rate (the recording's own for a single time)
        span = out_t[-1] - out_t[0]
        fs = (out_t.size - 1) / span if out_t.size > 1 else float(ds.attrs["fs"])
    data_vars: dict[str, Any]
    coords: dict[str, Any]
    if rec.windows.layout == "grid":
        ny, nx = first.shape[1:]
        data_vars = {rec.var: (("time", "y", "x"), values)}
        coords = {"y": ds["y"].values[:ny], "x": ds["x"].values[:nx]}
    else:
        data_vars = {rec.var: (("time", "roi"), values)}
        coords = {str(name): ds[name] for name in ds.coords if ds[name].dims == ("roi",)}
    attrs = {
        "nplanes": ds.attrs.get("nplanes", 1),
        "upsample": upsample or 0,
        "reconstruction_of": str(ds.attrs.get("source_name", "")),
    }
    return new_recording(
        data_vars,
        time=out_t,
        fs=fs,
        source_format="cst-reconstruction",
        source_name=f"{ds.attrs.get('source_name', '')} (reconstruction)",
        coords=coords,
        attrs=attrs,
    )
