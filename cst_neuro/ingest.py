"""Ingestion: any supported source → Recording with ΔF/F (and optionally a grid) → zarr.

This is the pipeline behind ``cst-neuro ingest``: read lazily, add ΔF/F, optionally
render or bin a spatiotemporal grid, and stream everything to an atomic zarr store, so
peak memory is bounded by chunk sizes rather than by the recording's length.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import xarray as xr
from pydantic import AfterValidator, Field

from cst_neuro.io import open_recording
from cst_neuro.io.base import READER_MODULES
from cst_neuro.preprocess import Baseline
from cst_neuro.schema import MAX_FS
from cst_neuro.store import check_writable, write_recording
from cst_neuro.validation import NonNegativeReal, Pair, PositiveInt, PositiveReal, validate_table

log = logging.getLogger(__name__)

FORMATS = ("auto", *READER_MODULES)


def _known_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"must be one of {', '.join(FORMATS)}")
    return name


@dataclass(frozen=True)
class IngestSettings:
    """The options of ``ingest`` (and of a batch file's ``[ingest]`` table), checked first."""

    format: Annotated[str, AfterValidator(_known_format)] = "auto"
    fs: Annotated[PositiveReal, Field(le=MAX_FS)] | None = None  # Hz; overrides the file's
    time_axis: Literal[0, 1] | None = None  # traces: 0 = time × roi, 1 = roi × time
    neuropil: NonNegativeReal | None = None  # the neuropil coefficient r
    baseline: Baseline = "maximin"
    all_rois: bool = False  # Suite2p: every ROI, not only cells
    grid_bin: PositiveInt | None = None  # also store a grid in N × N pixel bins
    key: str | None = None  # traces: which array
    dims: Pair | None = None  # CaImAn: image size (d1, d2)
    series: str | None = None  # NWB: which RoiResponseSeries
    swap_xy: bool | None = None  # NWB: force the pixel-mask x/y order


def prepare_recording(
    source: str | os.PathLike[str],
    *,
    format: str = "auto",
    neuropil: float | None = None,
    baseline: str = "maximin",
    grid_bin: int | None = None,
    **reader_options: Any,
) -> xr.Dataset:
    """Open ``source`` and add ΔF/F and an optional grid, all lazily (nothing is computed).

    ``reader_options`` go to the format's reader (``fs``, ``time_axis``, ``all_rois``,
    ``key``, ``dims``, ``series``, ``swap_xy``); None or False means "not given".
    """
    from cst_neuro.grid import render_grid
    from cst_neuro.preprocess import compute_dff

    given = {k: v for k, v in reader_options.items() if v is not None and v is not False}
    ds = open_recording(source, format=format, **given)
    if "F" in ds and "dff" not in ds:
        ds = compute_dff(ds, baseline=baseline, neuropil=neuropil)
    elif "dff" in ds and baseline not in ("maximin", "none"):
        log.warning("%s already holds ΔF/F; baseline %r is not applied", source, baseline)
    if "movie" in ds:
        # The registered movie stays where Suite2p wrote it; stores keep traces and grids.
        ds = ds.drop_vars("movie")
    if grid_bin is not None:
        grid = None if "grid" in ds else render_grid(ds, var="dff", bin=grid_bin)
        ds = _bin_images(ds, grid_bin)  # grid, mean image: all on the binned y/x
        if grid is not None:
            ds = ds.merge(grid, join="exact")
    return ds


def _bin_images(ds: xr.Dataset, grid_bin: int) -> xr.Dataset:
    """Every (…, y, x) variable binned grid_bin × grid_bin, so all share the same y/x."""
    from cst_neuro.grid import bin_movie

    if grid_bin == 1 or "y" not in ds.dims:
        return ds
    images = {n: bin_movie(ds[n], grid_bin) for n in ds.data_vars if {"y", "x"} <= set(ds[n].dims)}
    out = ds.drop_dims(["y", "x"])
    for name, image in images.items():
        out[name] = image
    return out


def ingest(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> Path:
    """Ingest ``source`` into the zarr store ``output``; ``options``: ``IngestSettings``.

    The options and the output are checked before anything is read.
    """
    settings = validate_table(IngestSettings, options)
    check_writable(output, overwrite=overwrite, inputs=[source])
    ds = prepare_recording(source, **settings)
    path = write_recording(ds, output, overwrite=overwrite, progress=progress)
    _warn_if_empty(path)
    return path


def _warn_if_empty(store: Path) -> None:
    """Log a warning when no frame of a written store is valid (nothing to model)."""
    from cst_neuro.store import open_store

    valid = open_store(store)["valid"].values
    if not valid.any():
        log.warning(
            "%s: none of its %d frames is valid (every sample missing or non-finite)",
            store, valid.size,
        )  # fmt: skip
