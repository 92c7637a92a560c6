"""Recordings as viewer layers: plain ``(data, kwargs, layer_type)`` tuples, Qt- and napari-free.

This module owns the step from a Recording (``cst_neuro.schema``) to what an image viewer
shows, in the shape of napari's "LayerData" tuples that a reader or sample-data command
returns (npe2 contributions: https://napari.org/stable/plugins/technical_references/manifest.html;
layer data tuples: https://napari.org/stable/plugins/building_a_plugin/guides.html). The
napari plugin (``napari_plugin``) is a thin shell around it; nothing here imports napari.

Layers, bottom to top:

- ``mean_image`` as an ``image`` layer, (y, x) or (plane, y, x);
- ``grid`` and ``movie`` (time, y, x) as ``image`` layers whose axis 0 is time in seconds
  (``scale`` 1 / fs, ``translate`` the first frame's time);
- the ROI footprints as a ``labels`` layer: the label of a pixel is the ROI's position
  along ``roi`` + 1 (0 is background); where footprints overlap the ROI with the highest
  ``footprint_weight`` wins (repeated entries of one ROI and pixel add up, as in
  ``cst_neuro.grid``; ties go to the lower position). Footprints on several planes (with a
  ``plane`` dimension, or without a mean image) give (plane, y, x) labels.

World coordinates: ``y``/``x`` are pixel indices (pixel i centred at i, the schema's
convention), so a binned image gets ``scale`` = bin and ``translate`` = its first block
centre, and lines up with the footprints. Every layer's kwargs carry ``axis_labels`` and
``units`` (napari >= 0.5 layer parameters) and a ``metadata`` dict with the Recording's
attrs, ``variable`` (which Recording variable the layer shows), ``axis_labels``, ``units``
and the Dataset itself under ``"recording"`` for later widgets.

Laziness: dask-backed variables stay dask-backed. Only footprints (small pixel lists) and
three frames per time series (for contrast limits, so the viewer need not scan the whole
movie) are read. A lazily computed mean image (a TIFF movie's mean over time) is handed
over unread, and starts hidden when it would read more than ``COSTLY_BYTES`` of movie.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import CSTNeuroError, InputError

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]

TIME_SERIES = ("grid", "movie")
COSTLY_BYTES = 256 << 20  # a mean image computed over more movie than this starts hidden
ASSUMED_FS = 1.0  # Hz, only when a file has no rate: time is then counted in frames
_UNIT_NAMES = {"pixels": "pixel", "px": "pixel", "um": "micrometer", "µm": "micrometer",
               "micron": "micrometer", "microns": "micrometer"}  # fmt: skip


# ---- opening -------------------------------------------------------------------------


def is_cst_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr store holding a Recording (cheap; never raises)."""
    from cst_neuro.store import is_store

    try:
        path = Path(path)
        if not is_store(path):
            return False
        for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
            meta = path / name
            if meta.is_file() and meta.stat().st_size < (16 << 20):
                attrs = json.loads(meta.read_text(encoding="utf-8"))
                attrs = attrs.get(key, {}) if key else attrs
                if isinstance(attrs, dict) and "schema_version" in attrs:
                    return True
        return False
    except Exception:
        return False


def can_open(path: str | os.PathLike[str]) -> bool:
    """Whether cst-neuro can open ``path``: a Recording store or a format a reader knows.

    Cheap (names, magic bytes, small JSON) and never raises.
    """
    from cst_neuro.io import guess_format

    try:
        if is_cst_store(path):
            return True
        guess_format(path)
        return True
    except Exception:
        return False


def open_for_viewing(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a store (``open_store``) or any supported source (``open_recording``), lazily.

    A source without a sampling rate (a TIFF without ImageJ ``finterval``, a bare trace
    array) is opened at ``ASSUMED_FS`` = 1 Hz, so time is counted in frames, with a
    warning and ``attrs["fs_assumed"] = True``; any other problem raises InputError.
    """
    from cst_neuro.io import READERS, guess_format, open_recording
    from cst_neuro.store import open_store

    if is_cst_store(path):
        return open_store(path)
    try:
        return open_recording(path)
    except InputError as first:
        try:
            reader = READERS.get(guess_format(path))
        except CSTNeuroError:
            reader = None
        if reader is None or "fs" not in reader.option_names():
            raise
        try:
            ds = open_recording(path, fs=ASSUMED_FS)
        except CSTNeuroError:
            raise first from None
        log.warning(
            "%s; opened at fs = %g Hz instead, so time is in frames "
            "(ingest it with `cst-neuro ingest --fs HZ` to set the rate)",
            first,
            ASSUMED_FS,
        )
    return ds.assign_attrs(fs_assumed=True)


def read_layers(path: str | os.PathLike[str]) -> list[LayerData]:
    """``recording_layers(open_for_viewing(path))``: what a viewer shows for ``path``."""
    return recording_layers(open_for_viewing(path))


# ---- layers --------------------------------------------------------------------------


def recording_layers(ds: xr.Dataset) -> list[LayerData]:
    """Every displayable part of ``ds``: mean image, grid, movie, ROI labels (bottom to top).

    Returns [] with a warning when the Recording holds nothing to show (traces only).
    """
    layers = [mean_image_layer(ds)]
    layers += [time_series_layer(ds, var) for var in TIME_SERIES]
    layers.append(roi_labels_layer(ds))
    found = [layer for layer in layers if layer is not None]
    if not found:
        have = ", ".join(str(v) for v in ds.data_vars) or "nothing"
        log.warning(
            "%s: nothing to display: no mean image, grid, movie or ROI footprints (it holds %s)",
            _source(ds),
            have,
        )
    return found


def mean_image_layer(ds: xr.Dataset) -> LayerData | None:
    """``mean_image`` (y, x) or (plane, y, x) as an image layer; None if absent."""
    if "mean_image" not in ds:
        return None
    image = ds["mean_image"]
    if not {"y", "x"} <= set(image.dims) or image.ndim > 3:
        log.warning("%s: mean_image has dims %s, not (y, x); not shown", _source(ds), image.dims)
        return None
    image = image.transpose(..., "y", "x")
    data = _lazy_data(image)
    # a lazy image (e.g. a movie's mean over time) is left to the viewer, which scales it
    # from what it displays: computing it here would read it twice
    limits = _finite_range(data) if isinstance(data, np.ndarray) else None
    kwargs = _spatial_kwargs(ds, image.dims, "mean_image", "mean image")
    kwargs["colormap"] = "gray"
    if _costly(data, ds):
        kwargs["visible"] = False
        log.info("%s: the mean image is computed from the whole movie when you show it; "
                 "it starts hidden", _source(ds))  # fmt: skip
    if limits is not None:
        kwargs["contrast_limits"] = limits
    return data, kwargs, "image"


def time_series_layer(ds: xr.Dataset, var: str = "grid") -> LayerData | None:
    """``ds[var]`` (time, y, x) as an image layer with time in seconds; None if absent."""
    if var not in ds:
        return None
    series = ds[var]
    if set(series.dims) != {"time", "y", "x"}:
        dims = series.dims
        log.warning("%s: %s has dims %s, not (time, y, x); not shown", _source(ds), var, dims)
        return None
    series = series.transpose("time", "y", "x")
    kwargs = _spatial_kwargs(ds, series.dims, var, var)
    kwargs["colormap"] = "gray" if var == "movie" else "viridis"
    limits = _frame_range(series)
    if limits is not None:
        kwargs["contrast_limits"] = limits
    return _lazy_data(series), kwargs, "image"


def roi_labels_layer(ds: xr.Dataset) -> LayerData | None:
    """ROI footprints as a labels layer (``roi_labels``); None without footprints."""
    if not all(f"footprint_{k}" in ds for k in ("roi", "y", "x", "weight")):
        return None
    if ds.sizes.get("pix", 0) == 0 or ds.sizes.get("roi", 0) == 0:
        return None
    planes = _label_planes(ds)
    labels = roi_labels(ds, planes=planes)
    dims = ("y", "x") if planes is None else ("plane", "y", "x")
    kwargs = _spatial_kwargs(ds, dims, "footprints", "ROIs", pixel_grid=True)
    kwargs["opacity"] = 0.5
    kwargs["features"] = roi_features(ds)
    return labels, kwargs, "labels"


def roi_labels(
    ds: xr.Dataset,
    *,
    shape: tuple[int, int] | None = None,
    planes: np.ndarray | None = None,
) -> np.ndarray:
    """(y, x) int32 label image of the footprints (or (plane, y, x) when ``planes`` is given).

    Label = position along ``roi`` + 1; on overlaps the highest summed weight wins, ties
    the lower position. ``shape`` defaults to the Recording's image size in pixels (grown
    to hold every footprint pixel); ``planes`` lists the ``roi_plane`` value of each slice.
    """
    roi = np.asarray(ds["footprint_roi"].values, dtype=np.int64)
    y = np.asarray(ds["footprint_y"].values, dtype=np.int64)
    x = np.asarray(ds["footprint_x"].values, dtype=np.int64)
    w = np.asarray(ds["footprint_weight"].values, dtype=np.float64)
    n_roi = ds.sizes["roi"]
    ly, lx = shape if shape is not None else _image_shape(ds, y, x)
    plane = np.zeros_like(roi)
    keep = (roi >= 0) & (roi < n_roi) & (y >= 0) & (y < ly) & (x >= 0) & (x < lx)
    if planes is not None:
        roi_plane = np.asarray(ds["roi_plane"].values)[np.clip(roi, 0, n_roi - 1)]
        plane = np.searchsorted(planes, roi_plane)
        keep &= (plane < len(planes)) & (planes[np.minimum(plane, len(planes) - 1)] == roi_plane)
    if not keep.all():
        log.warning(
            "%s: %d footprint pixels lie outside the %d x %d image (or a ROI's plane); not drawn",
            _source(ds), int((~keep).sum()), ly, lx,
        )  # fmt: skip
    n_planes = 1 if planes is None else len(planes)
    out = np.zeros((n_planes, ly, lx), dtype=np.int32)
    pixel = (plane[keep] * ly + y[keep]) * lx + x[keep]
    pairs, inverse = np.unique(pixel * n_roi + roi[keep], return_inverse=True)
    weight = np.bincount(inverse, weights=np.nan_to_num(w[keep], nan=-np.inf), minlength=pairs.size)
    pix, owner = pairs // n_roi, pairs % n_roi
    order = np.lexsort((-weight, pix))  # by pixel, then heaviest first (stable: lower roi)
    first = np.ones(order.size, dtype=bool)
    first[1:] = pix[order[1:]] != pix[order[:-1]]
    winners = order[first]
    out.reshape(-1)[pix[winners]] = owner[winners] + 1
    return out[0] if planes is None else out


def roi_features(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Per-label table for the labels layer: row 0 is the background, row i is label i."""
    n = ds.sizes["roi"]
    ids = np.asarray(ds["roi"].values) if "roi" in ds.coords else np.arange(n)
    features: dict[str, np.ndarray] = {
        "index": np.arange(n + 1),
        "roi": np.concatenate([[-1], ids]).astype(np.int64),
    }
    if "iscell" in ds:
        features["iscell"] = np.concatenate([[False], np.asarray(ds["iscell"].values, bool)])
    if "cell_prob" in ds:
        prob = np.asarray(ds["cell_prob"].values, dtype=np.float32)
        features["cell_prob"] = np.concatenate([[np.nan], prob]).astype(np.float32)
    return features


def layer_metadata(
    ds: xr.Dataset, variable: str, axis_labels: tuple[str, ...], units: tuple[str, ...]
) -> dict[str, Any]:
    """A layer's ``metadata``: the Recording's attrs, what it shows, and the Dataset."""
    meta: dict[str, Any] = {str(k): _plain(v) for k, v in ds.attrs.items()}
    meta.update(variable=variable, axis_labels=axis_labels, units=units, recording=ds)
    return meta


# ---- helpers -------------------------------------------------------------------------


def _source(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("source_name") or "recording")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _unit(attrs: dict[str, Any], default: str = "pixel") -> str:
    unit = str(attrs.get("units") or default)
    return _UNIT_NAMES.get(unit, unit)


def _axis(ds: xr.Dataset, dim: str, *, pixel_grid: bool = False) -> tuple[float, float, str]:
    """(scale, translate, unit) of ``dim``: seconds for time, pixel indices for y/x."""
    if dim == "time":
        t0 = float(ds["time"].values[0]) if "time" in ds.coords else 0.0
        return 1.0 / float(ds.attrs["fs"]), t0, "s"
    if pixel_grid or dim not in ds.coords or ds.sizes.get(dim, 0) == 0:
        return 1.0, 0.0, "pixel" if dim != "plane" else ""
    values = np.asarray(ds[dim].values, dtype=np.float64)
    step = float(values[1] - values[0]) if values.size > 1 else 1.0
    if values.size > 2 and not np.allclose(np.diff(values), step):
        log.warning("%s: %s coordinates are not evenly spaced; shown at step %g",
                    _source(ds), dim, step)  # fmt: skip
    if dim == "plane":
        return 1.0, 0.0, ""
    return (step if step > 0 else 1.0), float(values[0]), _unit(ds[dim].attrs)


def _spatial_kwargs(
    ds: xr.Dataset, dims: tuple[Any, ...], variable: str, label: str, *, pixel_grid: bool = False
) -> dict[str, Any]:
    """name, scale, translate, axis_labels, units and metadata of a layer over ``dims``."""
    axes = [_axis(ds, str(d), pixel_grid=pixel_grid and d != "time") for d in dims]
    axis_labels = tuple(str(d) for d in dims)
    units = tuple(a[2] for a in axes)
    return {
        "name": f"{_source(ds)} {label}",
        "scale": tuple(a[0] for a in axes),
        "translate": tuple(a[1] for a in axes),
        "axis_labels": axis_labels,
        "units": units,
        "metadata": layer_metadata(ds, variable, axis_labels, units),
    }


def _lazy_data(var: xr.DataArray) -> Any:
    """The array behind ``var``, unloaded: numpy or dask as is, lazy backends as dask."""
    if var.chunks is None and not getattr(var.variable, "_in_memory", True):
        var = var.chunk()
    return var.data


def _costly(data: Any, ds: xr.Dataset) -> bool:
    """A lazy image computed (not just read) from a time series larger than COSTLY_BYTES."""
    if not hasattr(data, "__dask_graph__") or not hasattr(data, "npartitions"):
        return False
    computed = len(data.__dask_graph__()) > 8 * max(data.npartitions, 1)
    return computed and any(v in ds and ds[v].nbytes > COSTLY_BYTES for v in TIME_SERIES)


def _finite_range(values: Any) -> tuple[float, float] | None:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _frame_range(series: xr.DataArray) -> tuple[float, float] | None:
    """Contrast limits from the first, middle and last frames only (never the whole movie)."""
    n = series.sizes["time"]
    frames = sorted({0, n // 2, n - 1})
    return _finite_range(series.isel(time=frames).values)


def _label_planes(ds: xr.Dataset) -> np.ndarray | None:
    """``roi_plane`` values of the label image's slices, or None for one (y, x) image."""
    if "plane" in ds.dims and "roi_plane" in ds.coords:
        if "plane" in ds.coords:
            return np.asarray(ds["plane"].values)
        return np.arange(ds.sizes["plane"])
    if "mean_image" not in ds and "roi_plane" in ds.coords:
        planes = np.unique(np.asarray(ds["roi_plane"].values))
        if planes.size > 1:  # each plane's footprints are in its own pixel grid
            return planes
    return None


def _image_shape(ds: xr.Dataset, y: np.ndarray, x: np.ndarray) -> tuple[int, int]:
    """(Ly, Lx) in pixels: the y/x extent (binned coords undone), Ly/Lx attrs, footprints."""
    shape = []
    for dim, pix in (("y", y), ("x", x)):
        extent = 0
        if dim in ds.dims:
            extent = ds.sizes[dim]
            if dim in ds.coords and extent > 1:
                values = np.asarray(ds[dim].values, dtype=np.float64)
                step = float(values[1] - values[0])
                extent = max(extent, int(np.ceil(values[-1] + (step + 1) / 2 - 1e-9)))
        elif f"L{dim}" in ds.attrs:
            extent = int(ds.attrs[f"L{dim}"])
        if pix.size:
            extent = max(extent, int(pix.max()) + 1)
        shape.append(max(extent, 1))
    return shape[0], shape[1]
