"""Recordings on disk: chunked, compressed zarr stores that are complete or absent.

A store is written into a hidden sibling folder and renamed into place only after every
chunk and a completion mark are on disk, so an interrupted write never leaves a store that
opens as valid, and an existing output is replaced only with ``overwrite=True`` (and only
if it is itself a zarr store). ``open_store`` checks the completion mark and the
``schema_version`` before returning a lazy Dataset.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError, OutputError, SchemaError
from cst_neuro.schema import validate_recording

COMPLETE_ATTR = "cst_neuro_complete"
TIME_CHUNK = 4096  # frames per chunk for (time, roi) variables: ~2 MB at 128 ROIs
GRID_CHUNK_BYTES = 4 << 20  # target bytes per (time, y, x) chunk


def _chunks_for(var: xr.DataArray) -> tuple[int, ...]:
    """Zarr chunk shape: along time, aligned with the variable's dask chunks if any."""
    dask_chunks = var.chunks  # tuple of tuples or None
    chunks = []
    for axis, (dim, size) in enumerate(zip(var.dims, var.shape, strict=True)):
        aligned = dask_chunks[axis][0] if dask_chunks else size
        if dim == "time":
            if var.ndim >= 3:
                frame_bytes = int(np.prod(var.shape[1:])) * var.dtype.itemsize
                want = max(1, GRID_CHUNK_BYTES // max(frame_bytes, 1))
            else:
                want = TIME_CHUNK
            chunks.append(_divisor_chunk(aligned, want) if dask_chunks else min(size, want))
        else:
            chunks.append(max(1, min(size, aligned)))
    return tuple(chunks)


def _divisor_chunk(dask_chunk: int, want: int) -> int:
    """A zarr chunk that tiles the dask chunk exactly (so parallel writes never overlap)."""
    if dask_chunk <= want:
        return dask_chunk
    for n in range(-(-dask_chunk // want), dask_chunk + 1):
        if dask_chunk % n == 0:
            return dask_chunk // n
    return dask_chunk


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    from zarr.codecs import BloscCodec

    codec = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")  # fastest here on noisy float32
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if var.ndim == 0:
            continue
        encoding[str(name)] = {"chunks": _chunks_for(xr.DataArray(var)), "compressors": (codec,)}
    return encoding


def _plain_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as JSON-friendly Python values (numpy scalars unwrapped)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def is_store(path: Path) -> bool:
    """Whether ``path`` is a zarr store (v2 or v3 root metadata present)."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup"))


def check_writable(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Fail early (before any work) if ``path`` cannot be written as a new store."""
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise OutputError(path, "already exists; pass --overwrite to replace it")
        if not is_store(path):
            raise OutputError(path, "exists and is not a zarr store; refusing to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(path, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(path, f"output folder {parent} is not writable")
    return path


def write_recording(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a Recording to a zarr store atomically; dask-backed data is streamed in chunks."""
    path = check_writable(path, overwrite=overwrite)
    validate_recording(ds)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    out = ds.copy()
    out.attrs = _plain_attrs(dict(ds.attrs))
    out.attrs.pop(COMPLETE_ATTR, None)
    for name in out.variables:
        out[name].encoding = {}
    try:
        delayed = out.to_zarr(
            tmp,
            mode="w-",
            zarr_format=3,
            consolidated=False,
            encoding=_encoding(out),
            compute=False,
        )
        _compute(delayed, progress=progress)
        _mark_complete(tmp)
        _swap_into_place(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(path, f"write failed ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _compute(delayed: Any, *, progress: bool) -> None:
    if progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="writing", unit="chunk", leave=False):
            delayed.compute()
    else:
        delayed.compute()


def _mark_complete(store: Path) -> None:
    import zarr

    group = zarr.open_group(store, mode="r+", zarr_format=3)
    group.attrs[COMPLETE_ATTR] = True


def _swap_into_place(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def open_store(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a store written by ``write_recording`` lazily, checking completeness and schema."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such store")
    if not is_store(path):
        raise InputError(path, "not a zarr store (no zarr.json); was it written by cst-neuro?")
    try:
        ds = xr.open_zarr(
            path,
            consolidated=False,
            zarr_format=None,
            decode_times=False,
            decode_timedelta=False,
            mask_and_scale=True,
        )
    except Exception as e:  # zarr/xarray raise many types for corrupt metadata
        raise InputError(path, f"cannot open zarr store ({type(e).__name__}: {e})") from e
    if not ds.attrs.pop(COMPLETE_ATTR, False):
        raise SchemaError(path, "store is incomplete (an interrupted write?); write it again")
    ds.attrs.setdefault("source_name", path.name)
    try:
        validate_recording(ds)
    except SchemaError as e:
        raise SchemaError(path, e.problem) from None
    return ds
