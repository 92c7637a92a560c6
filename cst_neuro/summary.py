"""Human-readable summaries of Recordings (what ``cst-neuro info`` prints)."""

from __future__ import annotations

import json
import os

import numpy as np
import xarray as xr


def describe(ds: xr.Dataset, *, path: str | os.PathLike[str] | None = None) -> str:
    """A few lines a person can read: size, rate, duration, source, ΔF/F method, content."""
    fs = float(ds.attrs["fs"])
    t = ds["time"].values
    duration = float(t[-1] - t[0]) + 1.0 / fs
    lines = [f"store:     {path}"] if path is not None else []
    lines.append(
        f"source:    {ds.attrs.get('source_format')} ({ds.attrs.get('source_name')})"
        + (f", version {ds.attrs['source_version']}" if ds.attrs.get("source_version") else "")
    )
    dims = ", ".join(f"{d}={n}" for d, n in ds.sizes.items())
    lines.append(f"dims:      {dims}")
    lines.append(f"rate:      {fs:g} Hz, {ds.sizes['time']} frames, {_duration(duration)}")
    if "roi" in ds.dims:
        cells = int(ds["iscell"].sum()) if "iscell" in ds else None
        planes = int(ds.attrs.get("nplanes", 1))
        lines.append(
            f"ROIs:      {ds.sizes['roi']}"
            + (f" ({cells} cells)" if cells is not None else "")
            + f", {planes} plane(s)"
        )
    if "dff_method" in ds.attrs:
        params = json.loads(ds.attrs.get("dff_params", "{}"))
        shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        lines.append(f"ΔF/F:      {ds.attrs['dff_method']}" + (f" ({shown})" if shown else ""))
    if "valid" in ds:
        valid = np.asarray(ds["valid"].values)
        lines.append(f"valid:     {int(valid.sum())}/{valid.size} frames complete")
        if not valid.any():
            lines.append("           no frame has data a model can read (every sample missing?)")
    data_vars = ", ".join(f"{n}{tuple(ds[n].dims)}" for n in ds.data_vars)
    lines.append(f"variables: {data_vars}")
    lines.append(
        f"schema:    v{ds.attrs.get('schema_version')}, "
        f"cst-neuro {ds.attrs.get('cst_neuro_version', '?')}"
    )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes} min {secs:.0f} s"
    return f"{minutes} min {secs:.1f} s" if minutes else f"{secs:.2f} s"
