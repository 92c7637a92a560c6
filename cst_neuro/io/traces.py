"""The ``traces`` reader: ΔF/F or fluorescence arrays in ``.npy``, ``.npz``, ``.mat``, ``.h5``.

Owns plain trace arrays (what CASCADE, the Allen Brain Observatory and most lab scripts
save).

Formats: the NumPy ``.npy``/``.npz`` format (``numpy.lib.format``); MATLAB MAT v4/v5 via
``scipy.io.loadmat``; MATLAB v7.3, which is HDF5 written column-major, so h5py sees every
array with MATLAB's shape reversed and this reader transposes it back; plain HDF5.

Which array: ``key`` if given, else the only 2-D (or 1-D) numeric array, else the only one
with a common name (``PREFERRED_KEYS``). Which axis is time: ``time_axis`` if given, else
only when unambiguous: a 1-D array or one with a singleton axis (one ROI), a timestamps
vector (``TIME_KEYS``) matching exactly one axis, or the CASCADE convention that
``dF_traces`` is roi × time. The rate comes from ``fs``, a rate key (``RATE_KEYS``, also
as an HDF5 attribute), or the timestamps. ``.npy`` and HDF5 stay lazy (dask); ``.npz`` and
MAT v5 load into memory. The result is ``F(time, roi)`` float32 with ``trace_kind``
"unknown": a later stage decides whether it already is ΔF/F. inf becomes NaN, never 0.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.io._common import ZIP_ERRORS, as_traces, lazy_h5, resolve_fs, row_chunks, sniff
from cst_neuro.io.base import Reader, register
from cst_neuro.io.mat5 import load_mat
from cst_neuro.io.npy import as_dask, open_npy, read_npy_header
from cst_neuro.schema import frame_times, new_recording

PREFERRED_KEYS = ("dff", "dF_traces", "dFF", "F", "traces", "data")
TIME_KEYS = ("time", "times", "timestamps", "t", "frame_times")
RATE_KEYS = ("fs", "frame_rate", "sampling_rate", "framerate")
ROI_BY_TIME_KEYS = ("dF_traces",)  # CASCADE's documented layout: roi × time
SUFFIXES = (".npy", ".npz", ".mat", ".h5", ".hdf5")
MAT_NUMERIC = {"double", "single", "int8", "uint8", "int16", "uint16"}
MAT_NUMERIC |= {"int32", "uint32", "int64", "uint64"}


@dataclass
class _Entry:
    """One array in a file, described without reading it."""

    name: str
    shape: tuple[int, ...]
    numeric: bool
    load: Callable[[], Any]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def leaf(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def _file_kind(path: Path) -> str:
    kind = sniff(path)
    if kind is None and path.suffix.lower() == ".mat":
        return "mat5"  # MAT v4 files have no signature
    if kind is None:
        raise InputError(path, f"not a {'/'.join(SUFFIXES)} file (unrecognised header)")
    return kind


def _scan_npy(path: Path) -> dict[str, _Entry]:
    arr = open_npy(path)
    lazy = as_dask(arr, row_chunks(arr.shape, arr.dtype.itemsize)) if arr.ndim else arr
    return {"": _Entry("", arr.shape, True, lambda: lazy)}


def _scan_npz(path: Path) -> dict[str, _Entry]:
    entries = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                with zf.open(member) as fh:
                    shape, _, dtype = read_npy_header(fh, f"{path}[{member}]")
                name = member[:-4]
                numeric = not dtype.hasobject and dtype.kind in "iuf"
                entries[name] = _Entry(name, shape, numeric, _npz_loader(path, member))
    except ZIP_ERRORS as e:
        raise InputError(path, f"not a readable .npz archive ({e})") from e
    return entries


def _npz_loader(path: Path, member: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
        except ZIP_ERRORS as e:
            raise InputError(path, f"member {member!r} is corrupt ({e})") from e

    return load


def _scan_mat5(path: Path) -> dict[str, _Entry]:
    """Arrays of a MAT v4/v5 file (loaded whole, through the crash guard of ``mat5``)."""
    contents = load_mat(path, squeeze_me=False)
    entries = {}
    for name, value in contents.items():
        if name.startswith("__") or not isinstance(value, np.ndarray):
            continue
        numeric = not value.dtype.hasobject and value.dtype.kind in "iuf"
        entries[name] = _Entry(name, value.shape, numeric, functools.partial(_same, value))
    return entries


def _same(value: np.ndarray) -> np.ndarray:
    return value


def _scan_hdf5(path: Path, *, matlab: bool) -> dict[str, _Entry]:
    import h5py

    entries: dict[str, _Entry] = {}
    root_rates: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or name.startswith("#"):
            return
        if matlab and "/" in name:  # MATLAB structs and cells: not plain arrays
            return
        cls = obj.attrs.get("MATLAB_class", b"")
        cls = cls.decode() if isinstance(cls, bytes) else str(cls)
        numeric = obj.dtype.kind in "iuf" and (not matlab or cls in MAT_NUMERIC)
        numeric = numeric and not obj.attrs.get("MATLAB_empty", 0)
        shape = tuple(obj.shape[::-1]) if matlab else tuple(obj.shape)
        rates = {**root_rates, **{k: obj.attrs[k] for k in obj.attrs if k in RATE_KEYS}}
        entries[name] = _Entry(name, shape, numeric, _h5_loader(path, name, matlab), rates)

    try:
        with h5py.File(path, "r") as f:
            root_rates.update({k: f.attrs[k] for k in f.attrs if k in RATE_KEYS})
            f.visititems(visit)
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as e:  # damaged metadata
        raise InputError(path, f"not a readable HDF5 file ({e})") from e
    return entries


def _h5_loader(path: Path, name: str, matlab: bool) -> Callable[[], Any]:
    def load() -> Any:
        arr = lazy_h5(path, name)
        return arr.T if matlab else arr  # MATLAB writes column-major: undo the reversal

    return load


def scan(path: Path) -> tuple[str, dict[str, _Entry]]:
    """The file's kind and its arrays (names, shapes, loaders), reading no array data."""
    kind = _file_kind(path)
    if kind == "npy":
        return kind, _scan_npy(path)
    if kind == "npz":
        return kind, _scan_npz(path)
    if kind == "mat5":
        return kind, _scan_mat5(path)
    return kind, _scan_hdf5(path, matlab=kind == "mat73")


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1) or (1,)


def _named(entry: _Entry, names: tuple[str, ...]) -> bool:
    return entry.leaf.lower() in {n.lower() for n in names}


def choose_data(path: Path, entries: dict[str, _Entry], key: str | None) -> _Entry:
    """The trace array: ``key``, else the only candidate, else the only common name."""
    if "" in entries and key is not None:
        raise InputError(path, "a .npy file holds one array; --key does not apply")
    if "" in entries or key is not None:
        entry = entries.get("" if key is None else key.lstrip("/"))
        if entry is None:
            names = ", ".join(sorted(entries))
            raise InputError(path, f"no array named {key!r} (found: {names or 'none'})")
        if not entry.numeric or not 1 <= len(entry.shape) <= 2:
            what = "the array" if key is None else repr(key)
            raise InputError(path, f"{what} is not a 1-D or 2-D numeric array {entry.shape}")
        return entry
    pool = [e for e in entries.values() if e.numeric and 1 <= len(e.shape) <= 2]
    pool = [e for e in pool if not _named(e, TIME_KEYS + RATE_KEYS)]
    pool = [e for e in pool if int(np.prod(e.shape)) != 1]
    ranked = [e for e in pool if len(e.shape) == 2] or pool
    if len(ranked) == 1:
        return ranked[0]
    common = [e for e in ranked if _named(e, PREFERRED_KEYS)]
    if len(common) == 1:
        return common[0]
    if not ranked:
        return _no_candidates(path, entries)
    names = ", ".join(f"{e.name} {e.shape}" for e in (common or ranked))
    raise InputError(path, f"several arrays could be the traces ({names}); pass --key NAME")


def _no_candidates(path: Path, entries: dict[str, _Entry]) -> _Entry:
    empty = [e for e in entries.values() if e.numeric and 0 in e.shape]
    if empty:
        raise InputError(path, f"array {empty[0].name!r} is empty (shape {empty[0].shape})")
    names = ", ".join(f"{e.name} {e.shape}" for e in entries.values()) or "nothing"
    raise InputError(path, f"no 1-D or 2-D numeric array of traces (found {names})")


def read_timestamps(path: Path, entries: dict[str, _Entry]) -> np.ndarray | None:
    """The file's timestamps vector (seconds), if it has exactly one; validated."""
    found = [e for e in entries.values() if e.numeric and _named(e, TIME_KEYS)]
    found = [e for e in found if len(_squeezed(e.shape)) == 1 and np.prod(e.shape) > 1]
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(e.name for e in found)
        raise InputError(path, f"several timestamp arrays ({names}); keep one")
    t = np.asarray(found[0].load(), dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(t)):
        raise InputError(path, f"timestamps {found[0].name!r} contain NaN or inf")
    if np.any(np.diff(t) <= 0):
        raise InputError(path, f"timestamps {found[0].name!r} are not strictly increasing")
    return t


def read_rate(path: Path, entries: dict[str, _Entry], data: _Entry) -> Any:
    """A sampling rate stored in the file (a rate attribute or scalar key), as stored.

    ``resolve_fs`` checks it: an attribute of text or of no or many values is an error.
    """
    values = [v for k, v in data.attrs.items() if k in RATE_KEYS]
    scalars = [e for e in entries.values() if e.numeric and _named(e, RATE_KEYS)]
    values += [e.load() for e in scalars if int(np.prod(e.shape)) == 1]
    return values[0] if values else None


def time_axis_of(path: Path, entry: _Entry, time_axis: int | None, n_times: int | None) -> int:
    """Which axis of ``entry`` is time (see the module docstring for the rules)."""
    shape = entry.shape
    if time_axis is not None:
        if time_axis not in (0, 1) or time_axis >= len(shape):
            raise InputError(path, f"--time-axis must be 0 or 1 for shape {shape}")
        return time_axis
    if len(shape) == 1:
        return 0
    if n_times is not None:
        matches = [ax for ax in (0, 1) if shape[ax] == n_times]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise InputError(path, f"timestamps have {n_times} samples; data shape is {shape}")
    elif entry.leaf in ROI_BY_TIME_KEYS:
        return 1
    elif 1 in shape:  # a single ROI stored as a row or column vector
        return 1 if shape[0] == 1 else 0
    raise InputError(
        path, f"cannot tell which axis is time for shape {shape}; pass --time-axis 0|1"
    )


class TracesReader(Reader):
    """ΔF/F or fluorescence arrays (.npy, .npz, .mat, .h5/.hdf5)."""

    name = "traces"
    description = "trace arrays in .npy, .npz, .mat (v5 and v7.3) or .h5/.hdf5 files"

    def guess_can_open(self, path: Path) -> bool:
        """Trace-array suffix and magic bytes; not a CaImAn result or an NWB file."""
        try:
            path = Path(path)
            if not path.is_file() or path.suffix.lower() not in SUFFIXES:
                return False
            kind = _file_kind(path)
            if kind == "npz":
                return not _is_caiman_zip(path)
            if kind in ("hdf5", "mat73"):
                return not _is_other_hdf5(path)
            return kind == "npy" or (kind == "mat5" and sniff(path) == "mat5")
        except Exception:
            return False

    def open(
        self,
        path: Path,
        *,
        fs: float | None = None,
        time_axis: int | None = None,
        key: str | None = None,
    ) -> xr.Dataset:
        """Read the traces as a Recording with ``F(time, roi)`` (lazy for .npy and HDF5)."""
        path = Path(path)
        kind, entries = scan(path)
        entry = choose_data(path, entries, key)
        if 0 in entry.shape:
            what = f"array {entry.name!r}" if entry.name else "the array"
            raise InputError(path, f"{what} is empty (shape {entry.shape}): no frames or no ROIs")
        t = read_timestamps(path, entries)
        time_ax = time_axis_of(path, entry, time_axis, None if t is None else t.size)
        n_frames = entry.shape[time_ax]
        n_rois = 1 if len(entry.shape) == 1 else entry.shape[1 - time_ax]
        if t is not None and t.size != n_frames:
            raise InputError(path, f"timestamps have {t.size} samples but data {n_frames}")
        fs = resolve_fs(path, fs, read_rate(path, entries, entry), t)
        traces = as_traces(entry.load(), time_ax)
        F = xr.Variable(("time", "roi"), traces, attrs={"trace_kind": "unknown"})
        return new_recording(
            {"F": F},
            time=frame_times(n_frames, fs) if t is None else t,
            fs=fs,
            source_format="traces",
            source_name=path.name,
            coords={"roi": ("roi", np.arange(n_rois, dtype=np.int64))},
            attrs={"source_version": kind, "source_key": entry.name},
        )


def _is_caiman_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        names = {n.removesuffix(".npy") for n in zf.namelist()}
    return bool(names & {"A", "A_full"}) and bool(names & {"C", "C_full"})


def _is_other_hdf5(path: Path) -> bool:
    """NWB files and CaImAn ``cnm.save()`` results belong to their own readers."""
    import h5py

    with h5py.File(path, "r") as f:
        return "nwb_version" in f.attrs or "estimates" in f


register(TracesReader)
