"""A recording's ROI traces as plain arrays for evaluation, and masked copies for models.

Evaluation reads a Recording (a zarr store or an xarray Dataset) once into ``Traces``:
(time, roi) values with NaN where a sample is missing or its frame is marked invalid, ROI
positions and, when the Dataset carries one (the simulator's ``clean_dff``), the clean
truth. ``masked_recording`` builds the Recording a model may see: only the samples a task
lets it observe, everything else absent (NaN and ``valid`` False), never imputed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.schema import new_recording

CLEAN_VAR = "clean_dff"  # optional clean truth (time, roi) in a Dataset, e.g. from the simulator


@dataclass
class Traces:
    """(T, C) traces in frame units, with what a model's Recording needs to be rebuilt."""

    name: str
    values: np.ndarray  # (T, C) float64, NaN where missing
    time: np.ndarray  # (T,) seconds
    fs: float
    roi_coords: dict[str, Any]  # coordinates along roi, for rebuilt Recordings
    positions: np.ndarray  # (C, 2) roi_y, roi_x (zeros when unknown)
    clean: np.ndarray | None  # (T, C) clean truth when known
    dropped_rois: int  # ROIs never finite, left out

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape


def load_traces(store: str | os.PathLike[str] | xr.Dataset) -> Traces:
    """ROI traces (dff, else F) of a store or Dataset; ROIs that are never finite are dropped."""
    if isinstance(store, xr.Dataset):
        ds = store
    else:
        from cst_neuro.store import open_store

        ds = open_store(Path(store))
    name = str(ds.attrs.get("source_name", "recording"))
    var = next((v for v in ("dff", "F") if v in ds), None)
    if var is None or ds[var].dims != ("time", "roi"):
        raise InputError(name, "evaluation needs ROI traces: a dff (or F) variable (time, roi)")
    values = np.asarray(ds[var].values, dtype=np.float64)
    if "valid" in ds:
        values[~np.asarray(ds["valid"].values, bool)] = np.nan
    alive = np.isfinite(values).any(0)
    if not alive.any():
        raise InputError(name, f"{var} has no finite sample")
    clean = None
    if CLEAN_VAR in ds:
        clean = np.asarray(ds[CLEAN_VAR].transpose("time", "roi").values, np.float64)[:, alive]
    roi_coords: dict[str, Any] = {
        str(k): (("roi",), np.asarray(ds[k].values)[alive])
        for k in ds.coords
        if ds[k].dims == ("roi",)
    }
    if "roi_y" in ds.coords and "roi_x" in ds.coords:
        positions = np.column_stack([ds["roi_y"].values, ds["roi_x"].values])[alive]
    else:
        positions = np.zeros((int(alive.sum()), 2))
    return Traces(
        name=name,
        values=values[:, alive],
        time=np.asarray(ds["time"].values, np.float64),
        fs=float(ds.attrs["fs"]),
        roi_coords=roi_coords,
        positions=np.asarray(positions, np.float64),
        clean=clean,
        dropped_rois=int((~alive).sum()),
    )


def traces_recording(
    values: np.ndarray, *, fs: float, name: str, time: np.ndarray | None = None, **coords: Any
) -> xr.Dataset:
    """A Recording of (T, C) ΔF/F traces (e.g. ground-truth cells, simulator output)."""
    t = np.arange(values.shape[0]) / fs if time is None else np.asarray(time, np.float64)
    return new_recording(
        {"dff": (("time", "roi"), np.asarray(values, np.float32))},
        time=t,
        fs=fs,
        source_format="cst-evaluation",
        source_name=name,
        coords={k: (("roi",), np.asarray(v)) for k, v in coords.items()},
    )


def masked_recording(traces: Traces, keep: np.ndarray, *, stride: int = 1) -> xr.Dataset:
    """The Recording a model may see: samples where ``keep`` (T, C), the rest absent.

    With ``stride`` k > 1 only every k-th frame is kept, at rate fs/k (an upsampling task's
    decimated recording; the other frames hold nothing observed).
    """
    rows = np.arange(0, traces.values.shape[0], stride)
    values = np.where(keep, traces.values, np.nan)[rows]
    valid = np.isfinite(values).any(1)
    return new_recording(
        {
            "dff": (("time", "roi"), values.astype(np.float32)),
            "valid": (("time",), valid),
        },
        time=traces.time[rows],
        fs=traces.fs / stride,
        source_format="cst-evaluation",
        source_name=traces.name,
        coords=traces.roi_coords,
    )
