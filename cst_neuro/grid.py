"""Spatiotemporal grids: ROI traces rendered through their footprints, and binned movies.

This module owns the step from a Recording's traces to ``grid(time, y, x)`` with its
``grid_mask(y, x)`` (``render_grid``), and the coarsening of movies (``bin_movie``). It
follows DESIGN.md ("a spatiotemporal grid comes either from a movie directly, or from
ROI traces rendered through their footprints, weighted by ``lam``, optionally binned")
and the Recording schema's flat footprint lists (``cst_neuro.schema``), which mirror
Suite2p's ``stat['ypix']``, ``stat['xpix']``, ``stat['lam']``.

Rendering. With weights ``w_r(p)`` (``footprint_weight``; entries repeated for the same
ROI and pixel add up) a pixel p at frame t is the weighted mean over the ROIs covering it
that have a finite sample at t::

    grid[t, p] = Σ_r w_r(p) · trace_r(t) / Σ_r w_r(p)        (r covering p, trace_r(t) finite)

so a NaN sample of one ROI never poisons another ROI's pixels; a pixel whose ROIs are all
missing at t is NaN at t, and a pixel no ROI covers is NaN always (``grid_mask`` False).

Binning (``bin > 1``): a block of bin × bin pixels is the mean of its covered pixels.
Both steps are linear, so they fold into one sparse (roi → block) matrix A with
``A[r, b] = Σ_{p in b} w_r(p) / (Σ_r' w_r'(p) · n_b)`` (n_b covered pixels in b) and
``grid[t, b] = Σ_r A[r, b] trace_r(t) / Σ_r A[r, b]`` over the finite samples at t: binning
costs nothing extra. Without missing samples this is exactly the mean of the bin = 1
pixels; with some, the block is the A-weighted mean of the ROIs present at t. Rows and
columns at the far edge that do not fill a whole block are dropped, as in ``bin_movie``;
block coordinates are the mean of the input pixel coordinates they hold.

Image size: the Recording's ``y``/``x`` dimensions (readers give ``mean_image(y, x)``
with ``y``/``x`` coords), else ``attrs['Ly']``/``attrs['Lx']``, else the footprints'
extent (max index + 1, the image assumed to start at pixel 0).

Laziness: the grid is always dask-backed (it is usually far larger than the traces);
each task multiplies one time chunk (T_chunk, roi) by the sparse matrix, and chunks hold
about 64 MiB of output. A trace variable chunked by ROI over all frames (as
``compute_dff`` leaves it) makes dask hold every ROI block at once; store it in time
chunks first (``cst_neuro.store``) to render recordings larger than memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.io import npy

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

FOOTPRINT_VARS = ("footprint_roi", "footprint_y", "footprint_x", "footprint_weight")


def render_grid(ds: xr.Dataset, *, var: str = "dff", bin: int = 1) -> xr.Dataset:
    """ROI traces ``ds[var](time, roi)`` rendered through the footprints, lazily.

    Returns a Dataset with ``grid(time, y, x)`` float32 (dask-backed) and
    ``grid_mask(y, x)`` bool (True where some ROI covers the pixel or block), with
    ``time`` and block-centre ``y``/``x`` coords; merge it into the Recording with
    ``ds.merge(...)`` when ``bin == 1``. Raises InputError for bin < 1, a bin larger
    than the image, a missing variable or missing/invalid footprints.
    """
    import dask.array as da

    path = ds.attrs.get("source_name")
    _check_bin(bin, path)
    if var not in ds:
        raise InputError(path, f"no variable {var!r} to render (have {', '.join(map(str, ds))})")
    traces = ds[var]
    if set(traces.dims) != {"time", "roi"}:
        raise InputError(path, f"{var!r} must have dims (time, roi), found {traces.dims}")
    traces = traces.transpose("time", "roi")
    shape, y_coord, x_coord = _image_frame(ds, path)
    if bin > min(shape):
        raise InputError(path, f"bin {bin} is larger than the {shape[0]} x {shape[1]} image")
    matrix_t, mask = _render_matrix(ds, shape, bin, path)  # (P, R) csr, (Yb, Xb)
    Yb, Xb = mask.shape
    colsum = np.asarray(matrix_t.sum(axis=1), dtype=np.float32).reshape(Yb * Xb)
    with np.errstate(divide="ignore"):
        inv_colsum = np.where(colsum > 0, 1 / colsum, np.nan).astype(np.float32)

    n_time = traces.sizes["time"]
    t_chunk = npy.rows_per_chunk(4 * Yb * Xb, n_time)
    data = traces.data
    if isinstance(data, da.Array):
        data = data.rechunk({0: t_chunk, 1: -1})
    else:
        data = da.from_array(np.asarray(data), chunks=(t_chunk, -1))
    grid = da.map_blocks(
        _render_block,
        data,
        matrix_t,
        inv_colsum,
        (Yb, Xb),
        dtype=np.float32,
        chunks=(data.chunks[0], (Yb,), (Xb,)),
        drop_axis=1,
        new_axis=[1, 2],
        meta=np.empty((0, 0, 0), np.float32),
    )
    coords = {
        "time": traces["time"],
        "y": ("y", _block_centres(y_coord.values, bin), y_coord.attrs),
        "x": ("x", _block_centres(x_coord.values, bin), x_coord.attrs),
    }
    grid_attrs = {
        "long_name": f"{var} rendered through ROI footprints",
        "source_var": var,
        "bin": bin,
    }
    return xr.Dataset(
        {"grid": (("time", "y", "x"), grid, grid_attrs), "grid_mask": (("y", "x"), mask)},
        coords=coords,
    )


def bin_movie(movie: xr.DataArray, bin: int) -> xr.DataArray:
    """Mean over bin × bin pixel blocks of a (..., y, x) movie or image, lazily, float32.

    Edge rows/columns that do not fill a whole block are dropped. NaN pixels are skipped
    (a block's mean over its finite pixels; NaN if it has none). Coordinates become
    block centres (mean of the input coords; 0 .. n-1 pixel indices when absent).
    """
    path = movie.attrs.get("source_name")
    _check_bin(bin, path)
    if not {"y", "x"} <= set(movie.dims):
        raise InputError(path, f"a movie or image needs dims y and x, found {movie.dims}")
    movie = movie.transpose(..., "y", "x")
    for dim in ("y", "x"):
        if bin > movie.sizes[dim]:
            raise InputError(
                path, f"bin {bin} is larger than the movie ({dim} has {movie.sizes[dim]} pixels)"
            )
        if dim not in movie.coords:
            pixels = np.arange(movie.sizes[dim], dtype=np.float64)
            movie = movie.assign_coords({dim: (dim, pixels, {"units": "pixels"})})
    ny, nx = movie.sizes["y"] // bin, movie.sizes["x"] // bin
    movie = movie.isel(y=slice(0, ny * bin), x=slice(0, nx * bin)).astype(np.float32)
    if movie.chunks is not None:
        movie = movie.chunk({dim: _multiple_chunks(movie, dim, bin) for dim in ("y", "x")})
    with np.errstate(invalid="ignore", divide="ignore"):
        out = movie.coarsen(y=bin, x=bin, boundary="exact").mean()
    out = out.astype(np.float32)
    out.attrs = {**movie.attrs, "bin": bin}
    return out


# ---------------------------------------------------------------------------------------


def _render_block(
    block: np.ndarray, matrix_t: csr_matrix, inv_colsum: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """One time chunk (T, R) of traces → (T, Yb, Xb) grid; each frame independent.

    Frames without missing samples are ``A^T y / colsum(A)`` (one sparse product and one
    in-place scaling); frames with some are renormalised by ``A^T m`` (m: finite mask).
    """
    block = np.asarray(block, dtype=np.float32)
    finite = np.isfinite(block)
    partial = ~finite.all(axis=1)
    values = np.where(finite, block, np.float32(0)).T if partial.any() else block.T  # (R, T)
    out = matrix_t @ values  # (P, T)
    if partial.any():
        den = matrix_t @ finite[partial].T.astype(np.float32)
        fixed = np.full(den.shape, np.nan, dtype=np.float32)
        np.divide(out[:, partial], den, out=fixed, where=den > 0)
    out *= inv_colsum[:, None]  # NaN where no ROI covers the block
    if partial.any():
        out[:, partial] = fixed
    return out.reshape(*shape, -1).transpose(2, 0, 1)  # (T, Yb, Xb)


def _render_matrix(
    ds: xr.Dataset, shape: tuple[int, int], bin: int, path: str | None
) -> tuple[csr_matrix, np.ndarray]:
    """(A^T as csr (Yb*Xb, R) float32, covered-block mask (Yb, Xb)); see module docstring."""
    from scipy import sparse

    missing = [v for v in FOOTPRINT_VARS if v not in ds]
    if missing:
        raise InputError(
            path, f"no ROI footprints to render through (missing {', '.join(missing)})"
        )
    roi, y, x, w = (np.asarray(ds[v].values) for v in FOOTPRINT_VARS)
    n_roi = ds.sizes["roi"]
    if roi.size == 0:
        raise InputError(path, "no ROI footprints to render through (0 footprint pixels)")
    _check_footprints(roi, y, x, w, n_roi, shape, path)
    Ly, Lx = shape
    Yb, Xb = Ly // bin, Lx // bin
    keep = (y < Yb * bin) & (x < Xb * bin) & (w > 0)
    roi, y, x, w = roi[keep].astype(np.int64), y[keep], x[keep], w[keep].astype(np.float64)
    y, x = y.astype(np.int64), x.astype(np.int64)
    pixel = y * Lx + x
    pixel_weight = np.bincount(pixel, weights=w, minlength=Ly * Lx)
    cy, cx = np.divmod(np.flatnonzero(pixel_weight > 0), Lx)  # covered pixels
    n_covered = np.bincount(cy // bin * Xb + cx // bin, minlength=Yb * Xb)
    block = y // bin * Xb + x // bin
    value = w / (pixel_weight[pixel] * n_covered[block])
    matrix_t = sparse.csr_matrix(
        (value.astype(np.float32), (block, roi)), shape=(Yb * Xb, n_roi), dtype=np.float32
    )
    matrix_t.sum_duplicates()
    return matrix_t, (n_covered > 0).reshape(Yb, Xb)


def _check_footprints(
    roi: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    n_roi: int,
    shape: tuple[int, int],
    path: str | None,
) -> None:
    for name, values, size in (
        ("footprint_roi", roi, n_roi),
        ("footprint_y", y, shape[0]),
        ("footprint_x", x, shape[1]),
    ):
        if values.dtype.kind not in "iu":
            raise InputError(path, f"{name} must hold integer indices, found {values.dtype}")
        if values.min() < 0 or values.max() >= size:
            raise InputError(
                path, f"{name} holds indices {values.min()}..{values.max()} outside 0..{size - 1}"
            )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError(path, "footprint_weight must be finite and >= 0")


def _image_frame(
    ds: xr.Dataset, path: str | None
) -> tuple[tuple[int, int], xr.Variable, xr.Variable]:
    """((Ly, Lx), y coord, x coord) from dims y/x, attrs Ly/Lx, or the footprint extent."""
    if "y" in ds.dims and "x" in ds.dims:
        shape = (ds.sizes["y"], ds.sizes["x"])
    elif "Ly" in ds.attrs and "Lx" in ds.attrs:
        shape = (int(ds.attrs["Ly"]), int(ds.attrs["Lx"]))
    elif "footprint_y" in ds and "footprint_x" in ds and ds.sizes.get("pix", 0) > 0:
        shape = (int(ds["footprint_y"].max()) + 1, int(ds["footprint_x"].max()) + 1)
    else:
        raise InputError(path, "no ROI footprints to render through (image size unknown)")
    coords = []
    for dim, size in zip(("y", "x"), shape, strict=True):
        if dim in ds.coords and ds.sizes.get(dim) == size:
            coords.append(ds[dim].variable.to_base_variable())
        else:
            coords.append(xr.Variable(dim, np.arange(size, dtype=np.float64), {"units": "pixels"}))
    return shape, coords[0], coords[1]


def _block_centres(values: np.ndarray, bin: int) -> np.ndarray:
    n = values.size // bin
    return np.asarray(values[: n * bin], dtype=np.float64).reshape(n, bin).mean(axis=1)


def _multiple_chunks(movie: xr.DataArray, dim: str, bin: int) -> int | tuple[int, ...]:
    """Chunks along ``dim`` that are whole multiples of ``bin`` (kept when they already are)."""
    chunks = movie.chunksizes[dim]
    if all(c % bin == 0 for c in chunks):
        return chunks
    return bin * max(1, max(chunks) // bin)


def _check_bin(bin: int, path: str | None) -> None:
    if isinstance(bin, bool) or not isinstance(bin, int | np.integer) or bin < 1:
        raise InputError(path, f"bin must be a whole number of pixels >= 1, got {bin!r}")
