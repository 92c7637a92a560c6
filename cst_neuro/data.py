"""From a Recording to model tokens: time splits, normalisation, windows, token batches.

Training batches (`sample_batch`) hold out part of each random window's frames as queries;
`channel_groups` splits many channels so that a window stays within ``max_tokens``.

A window of W frames is the unit of training and inference. A modelled variable up to
``memory_budget`` bytes is loaded once (random windows then cost nothing); a larger one
stays lazy and only each window's frames are read from the zarr store, so memory is
bounded by the budget and the window, never by the recording's length.

Both layouts become *channels* with a fixed position and a value vector:

- ROI traces: a channel per ROI at (roi_y, roi_x), value size 1, token time
  ``time[i] + roi_time_offset[r]`` (multi-plane scan offsets honoured);
- grids and movies: a channel per p×p patch at the patch centre, value size p².

A token is (value, coordinate (t, y, x), channel id). Time is measured in frames from the
window start (divided by ``frames_per_unit``: W for the paper's networks, whose time runs
over [0, 1] in a window), space in pixels divided by the field of view; a batch carries the
frame's length in seconds. Missing samples (NaN, frames outside the allowed split) are
absent tokens, never imputed values.

Each channel also has a descriptor (`channel_features`), computed once from the
recording's training frames like the normaliser: how smooth and how noisy its trace is at
the sampling rate, how skewed (calcium transients over a baseline), and the frame's length.
It is what lets one model serve recordings it was not trained on.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.fit_config import MEMORY_BUDGET, FitConfig


@dataclass(frozen=True)
class TimeSplit:
    """Boolean frame masks for training, validation and test; blocks in time, disjoint."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @classmethod
    def blocks(
        cls,
        n_frames: int,
        *,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        block_frames: int = 4,
        seed: int = 0,
    ) -> TimeSplit:
        """Assign whole blocks of ``block_frames`` frames at random to val/test, rest to train."""
        if not 0 <= val_fraction + test_fraction < 1:
            raise ValueError("val_fraction + test_fraction must be in [0, 1)")
        n_blocks = -(-n_frames // block_frames)
        order = np.random.default_rng(seed).permutation(n_blocks)
        n_val = round(val_fraction * n_blocks)
        n_test = round(test_fraction * n_blocks)
        block_of = np.arange(n_frames) // block_frames
        val = np.isin(block_of, order[:n_val])
        test = np.isin(block_of, order[n_val : n_val + n_test])
        return cls(train=~(val | test), val=val, test=test)


@dataclass(frozen=True)
class Normalizer:
    """Per-channel affine normalisation fitted on training frames only (saved with models)."""

    mean: np.ndarray  # (C, V)
    std: np.ndarray  # (C, V)

    @classmethod
    def fit(cls, values: xr.DataArray, train: np.ndarray) -> Normalizer:
        """Mean and sd of each channel over the training frames (NaN-aware, streamed)."""
        part = values.isel(time=np.flatnonzero(train))
        mean = np.asarray(part.mean("time", skipna=True).values, dtype=np.float64)
        std = np.asarray(part.std("time", skipna=True).values, dtype=np.float64)
        floor = max(float(np.nanmedian(std)) * 1e-3, 1e-8) if np.isfinite(std).any() else 1.0
        std = np.where(np.isfinite(std) & (std > floor), std, max(floor, 1e-8))
        mean = np.where(np.isfinite(mean), mean, 0.0)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std)}


CHANNEL_FEATURES = ("lag1", "lag2", "lag4", "noise", "skew", "log_frame")
FEATURE_FRAMES = 16384  # frames a channel descriptor is computed from, at most
READ_BYTES = 16 << 20  # bytes of samples read at once where a whole recording is scanned
MAX_EMPTY_DRAWS = 1000  # windows drawn in a row without two observed frames before giving up


@dataclass
class Tokens:
    """A padded batch of token sets, with the channel descriptors and frame lengths."""

    coords: torch.Tensor  # (B, N, 3) float32: t, y, x normalised
    values: torch.Tensor  # (B, N, V) float32 (zeros where absent)
    ids: torch.Tensor  # (B, N) int64 channel index
    mask: torch.Tensor  # (B, N) bool: True for a real token
    value_mask: torch.Tensor  # (B, N, V) bool: which value entries are observed
    channels: torch.Tensor | None = None  # (B or 1, n_channels, F) channel descriptors
    seconds_per_frame: torch.Tensor | None = None  # (B,) float32

    def to(self, device: torch.device | str) -> Tokens:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Tokens(
            self.coords.to(device),
            self.values.to(device),
            self.ids.to(device),
            self.mask.to(device),
            self.value_mask.to(device),
            move(self.channels),
            move(self.seconds_per_frame),
        )


def pad_tokens(
    parts: list[dict[str, np.ndarray]],
    value_dim: int,
    *,
    channels: np.ndarray | list[np.ndarray] | None = None,
    seconds_per_frame: float | list[float] | None = None,
) -> Tokens:
    """Stack per-sample token arrays into one padded batch.

    ``channels`` is one descriptor table (n_channels, F) shared by every sample, or one per
    sample (padded with zeros to the largest); ``seconds_per_frame`` one number or one per
    sample. Padding tokens repeat the sample's identities in turn, so that the work per
    channel of the decoder's own-channel attention (`ChannelGroups`) stays balanced.
    """
    n = max(1, max(len(p["ids"]) for p in parts))
    b = len(parts)
    coords = np.zeros((b, n, 3), np.float32)
    values = np.zeros((b, n, value_dim), np.float32)
    ids = np.zeros((b, n), np.int64)
    mask = np.zeros((b, n), bool)
    value_mask = np.zeros((b, n, value_dim), bool)
    for i, p in enumerate(parts):
        k = len(p["ids"])
        coords[i, :k], values[i, :k], ids[i, :k] = p["coords"], p["values"], p["ids"]
        if 0 < k < n:
            ids[i, k:] = p["ids"][np.arange(n - k) % k]
        mask[i, :k], value_mask[i, :k] = True, p["value_mask"]
    tokens = Tokens(*(torch.from_numpy(a) for a in (coords, values, ids, mask, value_mask)))
    if isinstance(channels, list):
        table = np.zeros((b, max(len(c) for c in channels), channels[0].shape[1]), np.float32)
        for i, c in enumerate(channels):
            table[i, : len(c)] = c
        tokens.channels = torch.from_numpy(table)
    elif channels is not None:
        tokens.channels = torch.from_numpy(np.asarray(channels, np.float32))[None]
    if seconds_per_frame is not None:
        tokens.seconds_per_frame = torch.as_tensor(
            np.broadcast_to(np.asarray(seconds_per_frame, np.float32), (b,)).copy()
        )
    return tokens


def channel_features(
    values: np.ndarray, fs: float, *, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> np.ndarray:
    """(C, F) descriptors of (T, C, V) samples (NaN = absent) at rate ``fs``: `CHANNEL_FEATURES`.

    On the z-scored trace (``mean``/``std`` per channel, else its own): autocorrelation at
    1, 2 and 4 frames, the noise share (robust sd of frame-to-frame steps over √2: 1 for
    white noise, near 0 for a slow clean trace), the skew (a fifth of it, clipped) and
    log10 of the frame's length + 1.5 (0 at about 30 Hz). Entries of a patch are pooled.
    A channel with too few samples gets zeros for what it cannot estimate.
    """
    x = np.asarray(values, np.float64)
    if mean is None or std is None:
        mean, std = np.nanmean(x, 0), np.nanstd(x, 0)
    z: np.ndarray = (x - mean) / np.where(np.asarray(std) > 0, std, 1.0)  # (T, C, V)
    T, C, V = z.shape
    out = np.zeros((C, len(CHANNEL_FEATURES)), np.float32)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # channels without samples: NaN → 0
        power = np.nanmean(z * z, axis=(0, 2))
        for j, lag in enumerate((1, 2, 4)):
            if lag < T:
                pairs = z[lag:] * z[:-lag]
                out[:, j] = np.nan_to_num(np.nanmean(pairs, axis=(0, 2)) / power)
        if T > 1:
            steps = np.abs(np.diff(z, axis=0)).reshape(T - 1, C * V)
            noise = 1.4826 * np.nanmedian(steps, axis=0).reshape(C, V).mean(1) / np.sqrt(2)
            out[:, 3] = np.clip(np.nan_to_num(noise), 0.0, 2.0)
        skew = np.nanmean(z**3, axis=(0, 2)) / np.maximum(power, 1e-12) ** 1.5
        out[:, 4] = np.clip(np.nan_to_num(skew), -5.0, 10.0) / 5.0
    out[:, 5] = np.log10(1.0 / fs) + 1.5
    return np.clip(out, -2.0, 2.0)


class ChannelWindows:
    """Windows of a (time, channel, value) view of a Recording, as normalised token sets."""

    def __init__(
        self,
        ds: xr.Dataset,
        *,
        var: str | None = None,
        window: int = 32,
        patch: int = 4,
        allowed: np.ndarray | None = None,
        normalizer: Normalizer | None = None,
        features: np.ndarray | None = None,
        frames_per_unit: float = 1.0,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        self.var = var or _default_var(ds)
        self.window = int(window)
        self.n_frames = ds.sizes["time"]
        if self.window < 2 or self.window > self.n_frames:
            raise InputError(
                ds.attrs.get("source_name"),
                f"window of {window} frames does not fit a recording of {self.n_frames} frames",
            )
        self.fs = float(ds.attrs["fs"])
        self.t0 = float(ds["time"].values[0])
        self.allowed = np.ones(self.n_frames, bool) if allowed is None else np.asarray(allowed)
        self.values = channel_view(ds, self.var, patch=patch)
        if self.values.nbytes <= memory_budget:
            # random windows from memory; a lazy graph (e.g. unsaved ΔF/F) is computed once
            self.values = self.values.load()
        self.layout = "grid" if ds[self.var].ndim == 3 else "traces"
        self.grid_shape = patch_grid(ds, patch) if self.layout == "grid" else None
        self.patch = patch if self.layout == "grid" else 1
        self.positions, self.offsets_frames, self.fov = channel_positions(ds, self.var, patch)
        self.n_channels, self.value_dim = self.values.shape[1], self.values.shape[2]
        self.normalizer = normalizer or Normalizer.fit(self.values, self.allowed)
        self.frames_per_unit = float(frames_per_unit)
        self.features = self._features() if features is None else np.asarray(features)

    def observed_samples(self) -> int:
        """Finite samples in the allowed frames (the data a model can train on), counted
        in blocks of frames so that memory does not grow with the recording's length."""
        per_read = max(1, READ_BYTES // max(1, self.n_channels * self.value_dim * 4))
        total = 0
        for start in range(0, self.n_frames, per_read):
            keep = self.allowed[start : start + per_read]
            if keep.any():
                block = np.asarray(self.values.isel(time=slice(start, start + per_read)).values)
                total += int(np.isfinite(block[keep]).any(-1).sum())
        return total

    def _features(self) -> np.ndarray:
        """Channel descriptors from (at most `FEATURE_FRAMES`) allowed frames, read a few
        channels at a time (descriptors are per channel; memory stays bounded)."""
        stop = min(self.n_frames, FEATURE_FRAMES)
        per_read = max(1, READ_BYTES // (stop * self.value_dim * 8))
        mean, std = self.normalizer.mean, self.normalizer.std
        parts = []
        for c in range(0, self.n_channels, per_read):
            chans = slice(c, c + per_read)
            view = self.values.isel({"time": slice(0, stop), "channel": chans})
            block = np.asarray(view.values, dtype=np.float64)
            block[~self.allowed[:stop]] = np.nan
            parts.append(channel_features(block, self.fs, mean=mean[chans], std=std[chans]))
        return np.concatenate(parts)

    def batch(self, parts: list[dict[str, np.ndarray]]) -> Tokens:
        """A padded batch of this recording's token sets, with its descriptors."""
        return pad_tokens(
            parts, self.value_dim, channels=self.features, seconds_per_frame=1.0 / self.fs
        )

    def read(self, start: int, *, masked: bool = True) -> np.ndarray:
        """Normalised values of frames ``start:start+W``: (W, C, V), NaN where absent.

        With ``masked`` (training), frames outside ``allowed`` are absent too.
        """
        stop = start + self.window
        block = np.asarray(self.values.isel(time=slice(start, stop)).values, dtype=np.float32)
        block = (block - self.normalizer.mean) / self.normalizer.std
        if masked:
            block[~self.allowed[start:stop]] = np.nan
        return block

    def coords(self, frames: np.ndarray, channels: np.ndarray, start: float) -> np.ndarray:
        """(t, y, x) of samples at absolute (possibly fractional) frame indices: t in
        frames from ``start`` over ``frames_per_unit``, space over the field of view."""
        t = (frames + self.offsets_frames[channels] - start) / self.frames_per_unit
        yx = self.positions[channels] / self.fov
        return np.column_stack([t, yx]).astype(np.float32)

    def tokens(self, block: np.ndarray, start: int, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Token arrays for the samples of ``block`` where ``keep`` (W, C) is True."""
        frame, channel = np.nonzero(keep)
        vals = block[frame, channel]  # (N, V)
        observed = np.isfinite(vals)
        return {
            "coords": self.coords(frame.astype(np.float64) + start, channel, start),
            "values": np.where(observed, vals, 0.0).astype(np.float32),
            "ids": channel.astype(np.int64),
            "value_mask": observed,
        }

    def observed(self, block: np.ndarray) -> np.ndarray:
        """(W, C) True where a sample has any finite value."""
        return np.isfinite(block).any(axis=-1)

    def starts(self, stride: int | None = None) -> np.ndarray:
        """Window starts covering every frame (the last window ends at the last frame)."""
        stride = stride or max(1, self.window // 2)
        last = self.n_frames - self.window
        return np.unique(np.append(np.arange(0, last + 1, stride), last))


def _default_var(ds: xr.Dataset) -> str:
    for name in ("dff", "grid", "F"):
        if name in ds:
            return name
    raise InputError(ds.attrs.get("source_name"), "recording has no dff, grid or F to model")


def patch_grid(ds: xr.Dataset, patch: int) -> tuple[int, int]:
    """Whole p×p patches along y and x (edge pixels that do not fill a patch are left out)."""
    ny, nx = ds.sizes["y"] // patch, ds.sizes["x"] // patch
    if ny == 0 or nx == 0:
        name = ds.attrs.get("source_name")
        raise InputError(name, f"grid smaller than one {patch}x{patch} patch")
    return ny, nx


def channel_view(ds: xr.Dataset, var: str, *, patch: int) -> xr.DataArray:
    """(time, channel, value) view of traces (value size 1) or p×p grid patches (p²)."""
    da = ds[var]
    if da.dims == ("time", "roi"):
        return da.rename(roi="channel").expand_dims(value=1, axis=2)
    if da.dims != ("time", "y", "x"):
        raise InputError(ds.attrs.get("source_name"), f"cannot model {var}{da.dims}")
    ny, nx = patch_grid(ds, patch)
    da = da.isel(y=slice(0, ny * patch), x=slice(0, nx * patch))
    data = da.data.reshape(da.sizes["time"], ny, patch, nx, patch)  # (T, ny, p, nx, p)
    data = data.transpose(0, 1, 3, 2, 4).reshape(da.sizes["time"], ny * nx, patch * patch)
    return xr.DataArray(data, dims=("time", "channel", "value"), coords={"time": da["time"]})


def channel_positions(ds: xr.Dataset, var: str, patch: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Channel (y, x) positions in pixels, per-channel time offsets in frames, FOV size."""
    fs = float(ds.attrs["fs"])
    if ds[var].dims == ("time", "roi"):
        n = ds.sizes["roi"]
        if "roi_y" in ds.coords and "roi_x" in ds.coords:
            pos = np.column_stack([ds["roi_y"].values, ds["roi_x"].values]).astype(np.float64)
        else:
            pos = np.zeros((n, 2))
        offsets = (
            np.asarray(ds["roi_time_offset"].values, np.float64) * fs
            if "roi_time_offset" in ds.coords
            else np.zeros(n)
        )
        fov = float(max(ds.sizes.get("y", 0), ds.sizes.get("x", 0), np.nanmax(pos, initial=0) + 1))
        return pos, offsets, fov
    ny, nx = patch_grid(ds, patch)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    centres = (np.column_stack([yy.ravel(), xx.ravel()]) + 0.5) * patch
    fov = float(max(ds.sizes["y"], ds.sizes["x"]))
    return centres.astype(np.float64), np.zeros(ny * nx), fov


def data_fingerprint(values: xr.DataArray, *, frames_per_read: int = 4096) -> str:
    """BLAKE2b of a variable's bytes, read in blocks of frames (bounded memory)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((values.dims, values.shape, str(values.dtype))).encode())
    for start in range(0, values.sizes["time"], frames_per_read):
        block = np.ascontiguousarray(values.isel(time=slice(start, start + frames_per_read)))
        digest.update(block.tobytes())
    return digest.hexdigest()


def channel_groups(n_channels: int, window: int, max_tokens: int) -> list[np.ndarray]:
    """Channels split into groups small enough that a window stays within max_tokens."""
    per_group = max(1, max_tokens // window)
    return [np.arange(s, min(s + per_group, n_channels)) for s in range(0, n_channels, per_group)]


def sample_batch(
    windows: ChannelWindows, starts: np.ndarray, config: FitConfig, rng: np.random.Generator
) -> tuple[Tokens, Tokens]:
    """A training batch: context tokens and held-out query tokens from random windows."""
    ctx_parts: list[dict[str, np.ndarray]] = []
    qry_parts: list[dict[str, np.ndarray]] = []
    per_group = max(1, config.max_tokens // config.window)
    attempts = 0
    while len(ctx_parts) < config.batch_size:
        attempts += 1
        if attempts > MAX_EMPTY_DRAWS and not ctx_parts:
            raise InputError(
                None,
                f"{MAX_EMPTY_DRAWS} random windows in a row held fewer than two observed "
                "frames: the training frames hold (almost) no finite samples",
            )
        start = int(rng.choice(starts))
        block = windows.read(start)  # (W, C, V)
        keep = np.zeros(block.shape[:2], bool)
        channels = (
            rng.choice(windows.n_channels, per_group, replace=False)
            if windows.n_channels > per_group
            else np.arange(windows.n_channels)
        )
        keep[:, channels] = True
        observed = windows.observed(block) & keep
        frames = np.flatnonzero(observed.any(1))
        if frames.size < 2:
            continue
        held = held_out_frames(frames, block.shape[0], config, rng)
        ctx_parts.append(windows.tokens(block, start, observed & ~held[:, None]))
        qry_parts.append(windows.tokens(block, start, observed & held[:, None]))
    return windows.batch(ctx_parts), windows.batch(qry_parts)


def held_out_frames(
    frames: np.ndarray, window: int, config: FitConfig, rng: np.random.Generator
) -> np.ndarray:
    """Frames to hold out as queries: random runs of 1..val_block observed frames.

    Single frames teach interpolation between neighbours (upsampling); longer runs teach
    in-filling of gaps like the validation blocks.
    """
    assert config.val_block is not None, "held_out_frames needs a resolved FitConfig"
    n_query = max(1, round(config.query_fraction * frames.size))
    held = np.zeros(window, bool)
    while held[frames].sum() < n_query:
        start = int(rng.choice(frames))
        held[start : start + int(rng.integers(1, config.val_block + 1))] = True
    if held[frames].all():  # keep some context
        held[frames[0]] = False
    return held
