"""Recordings on disk: chunked, compressed zarr stores that are complete or absent.

A store is written into a hidden sibling folder and renamed into place only after every
chunk, a completion mark and consolidated metadata are on disk (``cst_neuro.atomic``), so an
interrupted write never leaves a store that opens as valid, and an existing output is
replaced only with ``overwrite=True`` and only if it is a store cst-neuro wrote. Every chunk
carries a CRC32C checksum, and the completion mark records how many chunk files each
variable has, so a damaged chunk or a partial copy of a store is an InputError naming the
store, never silently wrong or missing values. Without ``overwrite``, a store that another
process put in place meanwhile is never replaced: the later writer fails instead.
``open_store`` checks the completion mark and the ``schema_version`` before returning a
lazy Dataset.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.atomic import OutputKind, atomic_folder, check_output
from cst_neuro.errors import InputError, SchemaError
from cst_neuro.schema import validate_recording

COMPLETE_ATTR = "cst_neuro_complete"
CHUNKS_ATTR = "cst_neuro_chunk_files"  # {variable: chunk files written}, set with COMPLETE_ATTR
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
    from zarr.codecs import BloscCodec, Crc32cCodec

    codec = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")  # fastest here on noisy float32
    codecs = (codec, Crc32cCodec())  # a checksum per chunk: damage is an error, not garbage
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if var.ndim == 0:
            continue
        encoding[str(name)] = {"chunks": _chunks_for(xr.DataArray(var)), "compressors": codecs}
    return encoding


def _plain_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as JSON-friendly Python values (numpy scalars unwrapped)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def is_store(path: Path) -> bool:
    """Whether ``path`` is a zarr store (v2 or v3 root metadata present)."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup"))


def is_own_store(path: Path) -> bool:
    """Whether ``path`` is a store cst-neuro wrote (its root metadata has a schema version)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attrs, dict) and "schema_version" in attrs


STORE = OutputKind("a zarr store written by cst-neuro", folder=True, recognise=is_own_store)


def check_writable(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Fail early (before any work) if ``path`` cannot be written as a new store.

    An existing ``path`` is replaced only with ``overwrite`` and only if it is a zarr
    store; ``inputs`` (the paths the command reads) are never written (see
    ``cst_neuro.atomic.check_output``). Returns the path to write.
    """
    return check_output(path, STORE, overwrite=overwrite, inputs=inputs)


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
    out = ds.copy()
    out.attrs = _plain_attrs(dict(ds.attrs))
    out.attrs.pop(COMPLETE_ATTR, None)
    for name in out.variables:
        out[name].encoding = {}
    with atomic_folder(path, overwrite=overwrite, create=False) as tmp:
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
    return path


def _compute(delayed: Any, *, progress: bool) -> None:
    if progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="writing", unit="chunk", leave=False):
            delayed.compute()
    else:
        delayed.compute()


def _mark_complete(store: Path) -> None:
    """Record the chunk-file counts and the completion mark, then consolidate metadata."""
    import zarr

    group = zarr.open_group(store, mode="r+", zarr_format=3)
    counts = {name: _chunk_files(store / name) for name in group.array_keys()}
    group.attrs.update({CHUNKS_ATTR: counts, COMPLETE_ATTR: True})
    with warnings.catch_warnings():  # "not part of the Zarr v3 specification" (yet)
        warnings.filterwarnings("ignore", "Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(store)  # xarray.open_zarr then opens it silently, fast


def _chunk_files(array: Path) -> int:
    """Chunk files of one zarr v3 array (all-fill chunks are not written, so not counted)."""
    return sum(len(files) for _, _, files in os.walk(array / "c"))


def _missing_chunks(path: Path, counts: Any) -> str:
    """What is missing ("" if nothing) against the chunk-file counts of the completion mark."""
    if not isinstance(counts, dict):
        return ""
    for name, expected in counts.items():
        found = _chunk_files(path / str(name))
        if found < int(expected):
            return f"{name} has {found} of its {expected} chunk files"
    return ""


class _StoreArray:
    """One variable of a store, read lazily; a failed read names the store and variable."""

    def __init__(self, var: xr.Variable, path: Path, name: str) -> None:
        self.var, self.path, self.name = var, path, name
        self.shape, self.dtype, self.ndim = var.shape, var.dtype, var.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.var[key].values)
        except Exception as e:  # zarr, codecs and checksums raise many types
            raise InputError(
                self.path, f"cannot read {self.name!r}: a damaged chunk ({type(e).__name__}: {e})"
            ) from e


def _guarded(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """``ds`` with every non-index variable as dask over ``_StoreArray`` (zarr's chunks)."""
    import dask.array as da

    data_vars: dict[Any, xr.Variable] = {}
    coords: dict[Any, xr.Variable] = {}
    for name, var in ds.variables.items():
        if name in ds.indexes or var.ndim == 0:
            continue
        chunks = var.encoding.get("preferred_chunks") or var.encoding.get("chunks") or var.shape
        if isinstance(chunks, dict):
            chunks = tuple(chunks.get(d, n) for d, n in zip(var.dims, var.shape, strict=True))
        meta = np.empty((0,) * var.ndim, var.dtype)
        array = _StoreArray(var, path, str(name))
        data = da.from_array(array, chunks=chunks, asarray=False, lock=False, meta=meta)
        new = xr.Variable(var.dims, data, var.attrs, var.encoding)
        (coords if name in ds.coords else data_vars)[name] = new
    return ds.assign_coords(coords).assign(data_vars)


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
            chunks=None,
            consolidated=False,
            zarr_format=None,
            decode_times=False,
            decode_timedelta=False,
            mask_and_scale=True,
        )
        ds = _guarded(ds, path)
    except Exception as e:  # zarr/xarray raise many types for corrupt metadata
        raise InputError(path, f"cannot open zarr store ({type(e).__name__}: {e})") from e
    if not ds.attrs.pop(COMPLETE_ATTR, False):
        raise SchemaError(path, "store is incomplete (an interrupted write?); write it again")
    missing = _missing_chunks(path, ds.attrs.pop(CHUNKS_ATTR, None))
    if missing:
        raise SchemaError(path, f"store is damaged or partly copied: {missing}")
    ds.attrs.setdefault("source_name", path.name)
    try:
        validate_recording(ds)
    except SchemaError as e:
        raise SchemaError(path, e.problem) from None
    return ds
