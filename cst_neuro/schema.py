"""The Recording: one xarray.Dataset layout shared by every reader, the store and the model.

Schema (version ``SCHEMA_VERSION``):

- dims ``time``, ``roi``; ``y``, ``x`` for images and grids; ``pix`` for footprint pixels;
  ``plane`` for per-plane images.
- coords: ``time`` (seconds, float64, acquisition time of the frame, i.e. of plane 0 in a
  multi-plane volume); ``roi`` (int64 ids: the ROI's index in its source); ``roi_y``,
  ``roi_x`` (centroids, pixels); ``roi_plane`` (int16) and ``roi_time_offset`` (seconds,
  float64: the scan offset of the ROI's plane, so the true sample time of ROI r at frame i
  is ``time[i] + roi_time_offset[r]``); ``y``, ``x`` (pixel indices: pixel i is centred
  at coordinate i, the convention of Suite2p's ypix/xpix; binned grids use block centres).
- data vars, only what the source has:
  ``dff``, ``F``, ``Fneu``, ``spks`` (time, roi) float32, with attr ``trace_kind`` where a
  reader knows it (unknown, dff, fluorescence, neuropil, deconvolved, caiman_C);
  ``dff_guarded`` (roi) int32, samples whose ΔF/F denominator was floored;
  ``iscell`` (roi) bool, ``cell_prob`` (roi) float32;
  footprints as sparse pixel lists on ``pix``: ``footprint_roi`` (int32 position along
  ``roi``), ``footprint_y``, ``footprint_x`` (int32), ``footprint_weight`` (float32);
  ``mean_image`` (y, x), or (plane, y, x) for several planes;
  ``grid`` (time, y, x) float32, with ``grid_mask`` (y, x) bool where a grid rendered
  from ROIs has data (NaN elsewhere);
  ``movie`` (time, y, x) the raw registered movie (Suite2p ``data.bin``), lazy, in the
  source's dtype;
  ``valid`` (time) bool, False where a sample of the frame's primary signal (dff, else
  F, else grid) is missing or non-finite, ignoring channels that are never finite, or
  where the source flagged the frame as bad (Suite2p ``badframes``).
  Missing samples are NaN, never zero.
- attrs: ``schema_version``, ``fs`` (Hz), ``source_format``, ``source_name`` (the file or
  folder name, never an absolute path), ``source_version``, ``neuropil_coefficient``,
  ``dff_method``, ``dff_params`` (JSON), ``cst_neuro_version``, ``nplanes``,
  ``n_bad_frames``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any

import numpy as np
import xarray as xr
from pydantic import AfterValidator, Field

from cst_neuro.errors import InputError, SchemaError
from cst_neuro.validation import (
    NonNegativeInt,
    NonNegativeReal,
    PositiveInt,
    PositiveReal,
    validate_table,
)

SCHEMA_VERSION = 1

MAX_FS = 1e6  # Hz: no imaging frame rate is faster; a larger "rate" is a units mistake
TRACE_VARS = ("dff", "F", "Fneu", "spks")
REQUIRED_ATTRS = ("schema_version", "fs", "source_format")


def package_version() -> str:
    """The installed cst-neuro version (recorded in every Recording)."""
    from cst_neuro import __version__

    return __version__


def frame_times(n_frames: int, fs: float, t0: float = 0.0) -> np.ndarray:
    """Regular acquisition times in seconds: ``t0 + i / fs``."""
    return t0 + np.arange(n_frames, dtype=np.float64) / float(fs)


def new_recording(
    data_vars: Mapping[str, Any],
    *,
    time: np.ndarray,
    fs: float,
    source_format: str,
    source_name: str,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble a Recording with the schema's coordinates and attributes filled in.

    ``data_vars`` maps names to ``(dims, array)`` pairs (numpy or dask arrays). ``valid``
    is computed lazily from the primary signal unless given (see ``finite_frames``).
    """
    time = np.asarray(time, dtype=np.float64)
    all_coords: dict[str, Any] = {"time": ("time", time, {"units": "s"})}
    all_coords.update(coords or {})
    base_attrs: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "fs": float(fs),
        "source_format": source_format,
        "source_name": source_name,
        "cst_neuro_version": package_version(),
    }
    base_attrs.update(attrs or {})
    ds = xr.Dataset(dict(data_vars), coords=all_coords, attrs=base_attrs)
    if "valid" not in ds:
        ds["valid"] = finite_frames(ds)
    validate_recording(ds)
    return ds


PRIMARY_VARS = ("dff", "F", "grid")  # the signal whose completeness ``valid`` reports


def finite_frames(ds: xr.Dataset) -> xr.DataArray:
    """``valid(time)`` from the primary signal (dff, else F, else grid), lazily and streaming.

    A frame is valid when every channel (ROI, pixel) of the primary signal is finite,
    ignoring channels that are never finite (one dead ROI must not invalidate every
    frame). When the data is split along time into several chunks, "never finite" cannot
    be known block by block without a second pass, so there every channel counts. When
    no channel has a finite sample at all, no frame is valid: there is nothing to read.
    """
    name = next((v for v in PRIMARY_VARS if v in ds), None)
    if name is None:
        return xr.DataArray(np.ones(ds.sizes["time"], dtype=bool), dims="time")
    var = ds[name].transpose("time", ...)
    axes = tuple(range(1, var.ndim))

    def frames_complete(block: np.ndarray, *, ignore_dead: bool) -> np.ndarray:
        finite = np.isfinite(block)
        if ignore_dead:
            finite |= ~finite.any(axis=0, keepdims=True)
        return finite.all(axis=axes, keepdims=True)

    data = var.data
    if not hasattr(data, "map_blocks"):  # numpy
        complete = frames_complete(data, ignore_dead=True).reshape(-1)
        return xr.DataArray(complete & bool(np.isfinite(data).any()), dims="time")
    ones = tuple((1,) * len(c) for c in data.chunks[1:])
    partial = data.map_blocks(
        frames_complete,
        ignore_dead=len(data.chunks[0]) == 1,
        dtype=bool,
        chunks=(data.chunks[0], *ones),
    )  # (time, 1 per block, ...): one small partial per block, no block kept
    import dask.array as da

    alive = da.isfinite(data).any()  # read in the same pass when computed together
    return xr.DataArray(partial.all(axis=axes) & alive, dims="time")


def dumps_params(params: Mapping[str, Any]) -> str:
    """Serialise processing parameters for attrs (zarr attrs must be JSON)."""
    return json.dumps(dict(params), sort_keys=True)


def _json_object(text: str) -> str:
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("must be a JSON object")
    return text


@dataclass(frozen=True)
class RecordingAttrs:
    """The attributes every reader of a Recording relies on, as they must be.

    A store's attributes are JSON anyone can edit; checking them where a store is opened
    turns a tampered ``fs`` (text, null) into one error instead of a crash later.
    """

    schema_version: PositiveInt
    fs: Annotated[PositiveReal, Field(le=MAX_FS)]
    source_format: str
    source_name: str | None = None
    source_version: str | None = None
    nplanes: PositiveInt | None = None
    n_bad_frames: NonNegativeInt | None = None
    neuropil_coefficient: NonNegativeReal | None = None
    dff_method: str | None = None
    dff_params: Annotated[str, AfterValidator(_json_object)] | None = None
    upsample: NonNegativeInt | None = None  # reconstructions: K, or 0 at given times


_ATTRS = tuple(f.name for f in fields(RecordingAttrs))


def validate_recording(ds: xr.Dataset) -> None:
    """Raise SchemaError if ``ds`` does not follow the Recording schema."""
    name = ds.attrs.get("source_name")
    for key in REQUIRED_ATTRS:
        if key not in ds.attrs:
            raise SchemaError(name, f"not a cst-neuro Recording: attribute {key!r} is missing")
    known = {k: v for k, v in ds.attrs.items() if k in _ATTRS}
    try:
        validate_table(RecordingAttrs, known, kind="attribute")
    except InputError as e:
        raise SchemaError(name, e.problem) from None
    version = ds.attrs["schema_version"]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            name,
            f"schema_version {version} is newer than this cst-neuro understands "
            f"({SCHEMA_VERSION}); upgrade cst-neuro to open it",
        )
    if "time" not in ds.dims or ds.sizes["time"] == 0:
        raise SchemaError(name, "the recording has no frames (time dimension is empty)")
    t = np.asarray(ds["time"].values)
    if not np.all(np.isfinite(t)):
        raise SchemaError(name, "time coordinate contains NaN or inf")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise SchemaError(name, "time coordinate is not strictly increasing")
    if not any(v in ds for v in (*TRACE_VARS, "grid", "movie")):
        raise SchemaError(name, "the recording has neither traces (dff, F) nor a grid or movie")
