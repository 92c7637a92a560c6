"""Suite2p output folders as Recordings: traces, cell labels, footprints, mean image, movie.

This module owns reading Suite2p results. It follows the layouts Suite2p writes
(https://suite2p.readthedocs.io/en/latest/outputs.html):

- a plane folder ``planeN/``: ``F.npy``, ``Fneu.npy``, ``spks.npy`` (n_rois, n_frames) float32,
  ``stat.npy`` (pickled list of per-ROI dicts: ``ypix``, ``xpix``, ``lam``, ``med`` = [y, x]),
  ``iscell.npy`` (n_rois, 2): label, probability, optional ``data.bin`` (registered movie,
  int16 (n_frames, Ly, Lx)). Metadata: Suite2p 0.x keeps everything in a flat ``ops.npy``
  (``fs``, ``nplanes``, ``Ly``, ``Lx``, ``neucoeff``, ``meanImg``); Suite2p 1.x splits it into
  ``db.npy`` (``nplanes``, ``iplane``, ``Ly``, ``Lx``), ``settings.npy`` (``fs``, ``version``,
  ``extraction.neuropil_coefficient``) and ``reg_outputs.npy`` (``meanImg``), with copies of
  ``db.npy``/``settings.npy`` one level up; ``ops.npy`` may be there too.
- a parent folder (Suite2p's ``suite2p/``) of ``plane0/``, ``plane1/``, ...: opened as ONE
  Recording whose ``roi`` dim concatenates the planes' ROIs in plane order (the order of
  ``combined/``, so ROI ids agree between the two). ``roi_plane`` says which plane a ROI is
  on and ``roi_time_offset = plane / (fs * nplanes)`` when it was sampled: Suite2p's ``fs`` is
  the per-plane volume rate and planes are scanned one after another. ``time`` is plane 0's
  frame times; a plane with fewer frames than the longest is padded with NaN. Footprint
  pixels stay in each plane's own pixel grid. With several planes there is no ``movie``, and
  ``mean_image`` is (plane, y, x) only when all planes share Ly/Lx (otherwise omitted).
- ``combined/``: the planes concatenated by Suite2p, each ``stat`` entry with its ``iplane``.
  Suite2p pads shorter planes with ZEROS there; those frames become NaN here (lengths from
  the sibling ``planeN/`` folders, else the trailing frames where a plane's F is exactly 0).
  Pixels keep Suite2p's tiled mosaic coordinates, matching the combined ``meanImg``.

Pickled files go through ``load_npy_object`` (never ``np.load(allow_pickle=True)``) and numeric
arrays through ``open_npy``: opening reads headers, stat, ops and iscell, never the traces.

The module is longer than most (~780 lines) because the three layouts and two metadata
versions share every step (metadata, ROIs, padding, assembly); split by layout, the parts
would import each other's internals.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.io._common import check_rate
from cst_neuro.io.base import Reader, register
from cst_neuro.io.npy import NumericFile, as_dask, open_npy, open_raw, rows_per_chunk
from cst_neuro.io.safe_pickle import load_npy_object
from cst_neuro.schema import frame_times, new_recording

logger = logging.getLogger(__name__)

TRACE_NAMES = ("F", "Fneu", "spks")
SUITE2P_NEUROPIL = 0.7  # Suite2p's default neuropil coefficient
MAX_COUNT = 2**40  # larger frame/plane counts or image sides are damage, not data
_PLANE_DIR = re.compile(r"plane(\d+)")
_GENERIC_DIR = re.compile(r"plane\d+|combined|suite2p")
_SUITE2P_FILES = ("F.npy", "stat.npy", "ops.npy", "iscell.npy", "Fneu.npy", "spks.npy")

Source = NumericFile | np.ndarray


@dataclass(frozen=True)
class _Meta:
    """What a folder's ops/db/settings/reg_outputs say; ``files`` names those read."""

    folder: Path
    files: tuple[str, ...]
    fs: tuple[Any, Path | None]
    neuropil: tuple[Any, Path | None]
    version: str
    nplanes: int | None
    iplane: int | None
    shape: tuple[int, int] | None  # (Ly, Lx)
    mean_image: np.ndarray | None
    badframes: tuple[np.ndarray, Path] | None = None  # (nframes,) bool flags and their file


@dataclass
class _Rois:
    """All ROIs of one folder, as stored; cell selection happens in ``_build``."""

    folder: Path
    traces: dict[str, Source]  # name -> (roi, frame) array on disk
    n_frames: int
    med: np.ndarray  # (n, 2) [y, x]
    counts: np.ndarray  # (n,) pixels per ROI
    pixels: tuple[np.ndarray, np.ndarray, np.ndarray]  # flat ypix, xpix, lam
    plane: np.ndarray  # (n,) plane of each ROI
    iscell: np.ndarray | None
    cell_prob: np.ndarray | None
    frames_valid: np.ndarray | None = None  # (n,) real frames per ROI (combined/ padding)

    @property
    def n(self) -> int:
        return self.med.shape[0]


# --- metadata: ops.npy (0.x) / db.npy, settings.npy, reg_outputs.npy (1.x) -----------------


def _load_dict(path: Path) -> dict | None:
    """A pickled dict (ops/db/settings/reg_outputs) loaded safely, or None if absent."""
    if not path.is_file():
        return None
    value = load_npy_object(path)
    if not isinstance(value, dict):
        raise InputError(path, f"expected a pickled dict, found {type(value).__name__}")
    return value


def _lookup(sources: list[tuple[Path, dict]], *keys: tuple[str, ...]) -> tuple[Any, Path | None]:
    """First non-None value of the first key path found, and the file it came from."""
    for key in keys:
        for path, d in sources:
            value: Any = d
            for k in key:
                value = value.get(k) if isinstance(value, dict) else None
            if value is not None:
                return value, path
    return None, None


def _read_meta(folder: Path) -> _Meta:
    """Metadata of a plane, parent or combined folder (1.x planes also look one level up)."""
    names = ("settings", "reg_outputs", "db", "ops")  # priority order for lookups
    sources = [(folder / f"{n}.npy", _load_dict(folder / f"{n}.npy")) for n in names]
    if _GENERIC_DIR.fullmatch(folder.name):
        sources += [
            (folder.parent / f"{n}.npy", _load_dict(folder.parent / f"{n}.npy"))
            for n in ("settings", "db")
        ]
    found = [(p, d) for p, d in sources if d is not None]
    version, _ = _lookup(found, ("version",), ("suite2p_version",))
    if version is None:
        version = "0.x" if all(p.name == "ops.npy" for p, _ in found) else "1.x"
    Ly, path_y = _lookup(found, ("Ly",))
    Lx, path_x = _lookup(found, ("Lx",))
    shape = (
        None
        if Ly is None or Lx is None
        else (_count(Ly, path_y, "Ly", least=1), _count(Lx, path_x, "Lx", least=1))
    )
    nplanes, path_n = _lookup(found, ("nplanes",))
    iplane, path_i = _lookup(found, ("iplane",))
    return _Meta(
        folder=folder,
        files=tuple(p.name for p, _ in found),
        fs=_lookup(found, ("fs",)),
        neuropil=_lookup(found, ("extraction", "neuropil_coefficient"), ("neucoeff",)),
        version=str(version),
        nplanes=None if nplanes is None else max(1, _count(nplanes, path_n, "nplanes")),
        iplane=None if iplane is None else _count(iplane, path_i, "iplane"),
        shape=shape,
        mean_image=_mean_image(_lookup(found, ("meanImg",)), shape),
        badframes=_badframes(_lookup(found, ("badframes",))),
    )


def _badframes(found: tuple[Any, Path | None]) -> tuple[np.ndarray, Path] | None:
    """Suite2p's per-frame ``badframes`` flags (a 0/1 vector) and their file, if present.

    Anything else (indices, a table, text) is an InputError: guessing what it means
    would mark the wrong frames, and ignoring it would pass bad frames off as valid.
    """
    value, path = found
    if value is None or path is None:
        return None
    flags = np.asarray(value) if isinstance(value, np.ndarray | list) else None
    if flags is None or flags.ndim != 1 or flags.dtype.kind not in "biuf":
        what = type(value).__name__ if flags is None else f"a {flags.dtype} array {flags.shape}"
        raise InputError(path, f"badframes is {what}, not Suite2p's per-frame flags (0/1)")
    if not np.isin(flags, (0, 1)).all():
        raise InputError(
            path, "badframes holds values other than 0 and 1 (frame indices?); expected "
            "one 0/1 flag per frame"
        )  # fmt: skip
    return flags.astype(bool), path


def _mark_bad_frames(ds: xr.Dataset, metas: list[_Meta], n_frames: int) -> xr.Dataset:
    """``valid`` is also False on frames Suite2p flagged as bad in any plane."""
    bad = np.zeros(n_frames, bool)
    for meta in metas:
        if meta.badframes is not None:
            flags, path = meta.badframes
            if flags.size > n_frames:
                raise InputError(
                    path, f"badframes flags {flags.size} frames but the traces have {n_frames}"
                )
            bad[: flags.size] |= flags
    if bad.any():
        ds["valid"] = ds["valid"] & xr.DataArray(~bad, dims="time")
    ds.attrs["n_bad_frames"] = int(bad.sum())
    return ds


def _count(value: Any, path: Path | None, key: str, *, least: int = 0) -> int:
    """A whole number in ``least``..MAX_COUNT, or InputError naming the file."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer | float | np.floating):
        raise InputError(path, f"{key} is {value!r}, expected a whole number")
    huge = isinstance(value, int | np.integer) and abs(int(value)) >= 2**63  # float() overflows
    number = float("inf") if huge else float(value)
    if not (np.isfinite(number) and least <= number <= MAX_COUNT and number.is_integer()):
        raise InputError(path, f"{key} is {value!r}, expected a whole number in {least}..2^40")
    return int(value)


def _mean_image(found: tuple[Any, Path | None], shape: tuple[int, int] | None) -> np.ndarray | None:
    """``meanImg`` as float32 (y, x) when it is a 2-D image of the folder's Ly x Lx."""
    value, path = found
    image = np.asarray(value) if value is not None else None
    if image is None or image.ndim != 2 or image.dtype.kind not in "biuf":
        return None
    if shape is not None and image.shape != shape:
        logger.warning(
            "%s: meanImg is %s but Ly x Lx is %s; mean image left out", path, image.shape, shape
        )
        return None
    return image.astype(np.float32)


def _rate(metas: list[_Meta], override: float | None, where: Path) -> float:
    """Sampling rate (Hz): the override, else ``fs`` from settings/ops of every plane.

    Without an override every plane must state the same valid rate (a plane's bad ``fs``
    is an error, not skipped); with one, planes that state another rate are warned about.
    """
    found = [(meta.fs[0], meta.fs[1] or where) for meta in metas if meta.fs[0] is not None]
    if override is not None:
        rate = check_rate(where, override, "--fs")
        ignored = sorted({repr(value) for value, _ in found if not _same(value, rate)})
        if ignored:
            logger.warning("%s: --fs %g Hz overrides fs = %s in the folder", where, rate,
                           ", ".join(ignored))  # fmt: skip
        return rate
    if not found:
        files = ", ".join(metas[0].files) or "no ops.npy/settings.npy"
        raise InputError(where, f"no sampling rate in {files}; pass --fs HZ")
    rates = [check_rate(path, value, "fs (pass --fs HZ to override)") for value, path in found]
    for (_, path), rate in zip(found, rates, strict=True):
        if not _same(rate, rates[0]):
            raise InputError(
                path, f"fs {rate:g} Hz differs from the first plane's {rates[0]:g} Hz; "
                "pass --fs HZ"
            )  # fmt: skip
    return rates[0]


def _same(value: Any, rate: float) -> bool:
    """Whether a stored ``fs`` is the rate ``rate`` (to the last digit that matters)."""
    try:
        return bool(abs(float(value) - rate) <= 1e-6 * rate)
    except (TypeError, ValueError):
        return False


def _neuropil(meta: _Meta, override: float | None, where: Path) -> float:
    """Neuropil coefficient: the override, else the file's, else Suite2p's default (warned)."""
    value, path = (override, where) if override is not None else meta.neuropil
    if value is None:
        logger.warning(
            "%s: no neuropil coefficient in %s; using Suite2p's default %s",
            where,
            ", ".join(meta.files) or "the folder",
            SUITE2P_NEUROPIL,
        )
        return SUITE2P_NEUROPIL
    try:
        coef = float(value)
    except (TypeError, ValueError):
        coef = float("nan")
    if not (np.isfinite(coef) and coef >= 0):
        raise InputError(path, f"neuropil coefficient must be a number >= 0, got {value!r}")
    return coef


# --- ROIs: traces, stat, iscell ---------------------------------------------------------------


def _read_traces(folder: Path) -> tuple[dict[str, Source], int, int]:
    """Lazy F/Fneu/spks of a folder (shapes checked against F.npy), n_rois, n_frames."""
    path = folder / "F.npy"
    if not path.is_file():
        raise InputError(path, "no such file: a Suite2p plane folder needs F.npy and stat.npy")
    traces = {"F": open_npy(path)}
    shape = traces["F"].shape
    if len(shape) != 2:
        raise InputError(path, f"expected a 2-D (n_rois, n_frames) array, found shape {shape}")
    if shape[1] == 0:
        raise InputError(path, f"the recording has no frames (shape {shape})")
    for name in TRACE_NAMES[1:]:
        other = folder / f"{name}.npy"
        if not other.is_file():
            logger.warning("%s: no %s.npy; the Recording has no %s", folder, name, name)
            continue
        traces[name] = open_npy(other)
        if traces[name].shape != shape:
            raise InputError(other, f"shape {traces[name].shape} does not match F.npy {shape}")
    return traces, shape[0], shape[1]


def _read_stat(path: Path, n_rois: int, shape: tuple[int, int] | None, *, iplane: bool) -> dict:
    """Centroids, footprint pixels (and ``iplane`` if asked) of every ROI in ``stat.npy``."""
    if not path.is_file():
        raise InputError(path, "no such file: Suite2p's ROI list stat.npy is needed")
    stat = load_npy_object(path)
    if not isinstance(stat, np.ndarray | list) or np.ndim(stat) != 1:
        raise InputError(path, "expected a list of per-ROI dicts")
    if len(stat) != n_rois:
        raise InputError(path, f"{len(stat)} ROIs but F.npy has {n_rois}")
    limits = (None, None) if shape is None else shape
    med, ys, xs, lams, planes = np.zeros((n_rois, 2)), [], [], [], []
    for i, roi in enumerate(stat):
        keys = ("ypix", "xpix", "lam", "med", *(("iplane",) if iplane else ()))
        missing = [k for k in keys if not isinstance(roi, dict) or k not in roi]
        if missing:
            raise InputError(path, f"ROI {i} has no {missing[0]!r} (not a Suite2p stat entry)")
        ys.append(_pixels(roi["ypix"], path, i, "ypix", limits[0]))
        xs.append(_pixels(roi["xpix"], path, i, "xpix", limits[1]))
        lams.append(np.asarray(roi["lam"]))
        if lams[-1].shape != ys[-1].shape or xs[-1].shape != ys[-1].shape:
            raise InputError(path, f"ROI {i}: ypix, xpix and lam differ in length")
        if lams[-1].dtype.kind not in "biuf" or not np.all(np.isfinite(lams[-1])):
            raise InputError(path, f"ROI {i}: lam holds non-numbers, NaN or inf")
        med[i] = _centroid(roi["med"], path, i)
        if iplane:
            planes.append(_count(roi["iplane"], path, f"ROI {i}'s iplane"))
    flat = [np.concatenate(a) if a else np.zeros(0) for a in (ys, xs, lams)]
    return {
        "med": med,
        "counts": np.array([len(y) for y in ys], dtype=np.int64),
        "pixels": tuple(flat),
        "iplane": np.array(planes, dtype=np.int64),
    }


def _pixels(value: Any, path: Path, i: int, key: str, limit: int | None) -> np.ndarray:
    """Integer pixel indices of one ROI, checked to lie in 0..limit-1."""
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf" or not np.all(arr == np.round(arr)):
        raise InputError(path, f"ROI {i}: {key} is not a list of integer pixel indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or (limit is not None and arr.max() >= limit)):
        extent = f"0..{limit - 1}" if limit is not None else ">= 0"
        raise InputError(path, f"ROI {i}: {key} has pixels outside the image ({extent})")
    return arr


def _centroid(value: Any, path: Path, i: int) -> np.ndarray:
    try:
        med = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        med = np.zeros(0)
    if med.shape != (2,) or not np.all(np.isfinite(med)):
        raise InputError(path, f"ROI {i}: med is {value!r}, expected [y, x]")
    return med


def _read_iscell(path: Path, n_rois: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Cell labels (column 0 == 1) and probabilities (column 1) from ``iscell.npy``."""
    if not path.is_file():
        logger.warning("%s: no iscell.npy; every ROI counts as a cell", path.parent)
        return None, None
    arr = np.asarray(open_npy(path))
    arr = arr[:, None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[0] != n_rois or arr.shape[1] == 0:
        raise InputError(path, f"shape {arr.shape} does not match the {n_rois} ROIs in F.npy")
    prob = arr[:, 1].astype(np.float32) if arr.shape[1] > 1 else None
    return arr[:, 0] == 1, prob


def _read_rois(folder: Path, meta: _Meta, plane: int | None) -> _Rois:
    """Every ROI of a plane (``plane`` given) or combined/ folder (planes from ``iplane``)."""
    traces, n_rois, n_frames = _read_traces(folder)
    stat = _read_stat(folder / "stat.npy", n_rois, meta.shape, iplane=plane is None)
    iscell, prob = _read_iscell(folder / "iscell.npy", n_rois)
    planes = stat["iplane"] if plane is None else np.full(n_rois, plane, dtype=np.int64)
    return _Rois(
        folder, traces, n_frames, stat["med"], stat["counts"], stat["pixels"], planes, iscell, prob
    )


# --- combined/: Suite2p's zero padding of shorter planes -------------------------------------


def _combined_lengths(rois: _Rois) -> np.ndarray:
    """Frames of real data for each ROI of ``combined/`` (the rest is Suite2p's zero padding)."""
    n_planes = int(rois.plane.max()) + 1 if rois.n else 0
    siblings = [d for _, d in _plane_dirs(rois.folder.parent)]
    lengths = [_plane_frames(siblings[k]) if k < len(siblings) else None for k in range(n_planes)]
    for k, n in enumerate(lengths):
        if n is not None and n > rois.n_frames:
            raise InputError(
                siblings[k] / "F.npy",
                f"{n} frames but combined/F.npy has only {rois.n_frames}; combined/ is out of date",
            )
    found = _trailing_zeros(rois.traces["F"], rois.plane, n_planes) if None in lengths else None
    counts = [int(found[k]) if n is None and found is not None else int(n or 0)
              for k, n in enumerate(lengths)]  # fmt: skip
    for k, n in enumerate(counts):
        if n < rois.n_frames and np.any(rois.plane == k):
            logger.info(
                "%s: plane %d has %d of %d frames; the padding is NaN",
                rois.folder,
                k,
                n,
                rois.n_frames,
            )
    return np.asarray(counts, dtype=np.int64)[rois.plane]


def _plane_frames(folder: Path) -> int | None:
    """Frames of a sibling plane folder: its F.npy header, else ops/db ``nframes``."""
    if (folder / "F.npy").is_file():
        shape = open_npy(folder / "F.npy").shape
        return int(shape[1]) if len(shape) == 2 else None
    for name in ("db.npy", "ops.npy"):
        d = _load_dict(folder / name)
        if d is not None and d.get("nframes") is not None:
            return _count(d["nframes"], folder / name, "nframes")
    return None


def _trailing_zeros(F: Source, plane: np.ndarray, n_planes: int) -> np.ndarray:
    """Per plane, frames up to the last one where any of its ROIs is non-zero in F.

    Streams F in row blocks (bounded memory). Frames where every ROI of a plane is exactly
    0 carry no fluorescence either way, so marking them missing never hides data.
    """
    n_rois, n_frames = F.shape
    logger.info("scanning F.npy for Suite2p's zero padding (no sibling plane folders)")
    last = np.zeros(n_rois, dtype=np.int64)
    step = rows_per_chunk(n_frames * F.dtype.itemsize, F.shape[0])
    for start in range(0, n_rois, step):
        nonzero = np.asarray(F[start : start + step]) != 0
        from_end = np.argmax(nonzero[:, ::-1], axis=1)
        last[start : start + step] = np.where(nonzero.any(axis=1), n_frames - from_end, 0)
    lengths = np.zeros(n_planes, dtype=np.int64)
    np.maximum.at(lengths, plane, last)
    return lengths


# --- lazy arrays -------------------------------------------------------------------------------


def _finite_or_nan(block: np.ndarray, frames_valid: np.ndarray) -> np.ndarray:
    """float32 copy of a (roi, frame) block: inf and frames past a ROI's data become NaN."""
    out = block.astype(np.float32)
    out[np.isinf(out)] = np.nan
    out[np.arange(out.shape[1]) >= frames_valid] = np.nan  # frames_valid is (rows, 1)
    return out


def _lazy_trace(source: Source, keep: np.ndarray, valid: np.ndarray | None, n_frames: int) -> Any:
    """Dask (roi, frame) float32 of the kept ROIs, NaN-padded to ``n_frames``; reads nothing."""
    import dask.array as da

    arr = as_dask(source, chunks=(rows_per_chunk(source.shape[1] * 4, source.shape[0]), -1))
    if keep.size < arr.shape[0]:
        arr = arr[keep]
    valid = np.full(keep.size, arr.shape[1]) if valid is None else valid[keep]
    valid = da.from_array(valid[:, None], chunks=(arr.chunks[0], 1))
    arr = da.map_blocks(
        _finite_or_nan, arr, valid, dtype=np.float32, meta=np.empty((0, 0), np.float32)
    )
    if arr.shape[1] < n_frames:  # a plane with fewer frames: NaN, never zeros, after its end
        pad = da.full(
            (arr.shape[0], n_frames - arr.shape[1]),
            np.nan,
            dtype=np.float32,
            chunks=(arr.chunks[0], -1),
        )
        arr = da.concatenate([arr, pad], axis=1).rechunk({1: -1})
    return arr


def _movie(folder: Path, meta: _Meta, n_frames: int) -> Any:
    """The registered movie ``data.bin`` as lazy (time, y, x) int16, or None if absent."""
    path = folder / "data.bin"
    if not path.is_file():
        return None
    if meta.shape is None:
        raise InputError(path, "frame size unknown: no Ly/Lx in ops.npy or db.npy")
    raw = open_raw(path, np.dtype(np.int16), meta.shape)
    if raw.shape[0] != n_frames:
        raise InputError(path, f"{raw.shape[0]} frames but F.npy has {n_frames}")
    return as_dask(raw, chunks=(rows_per_chunk(raw.row_nbytes, raw.shape[0]), -1, -1))


# --- folders ----------------------------------------------------------------------------------


def _plane_dirs(folder: Path) -> list[tuple[int, Path]]:
    """``planeN`` sub-folders sorted by N."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _PLANE_DIR.fullmatch(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def _planes_with_rois(folder: Path) -> list[tuple[int, Path]]:
    """Plane folders of a parent; one with neither F.npy nor stat.npy (no ROIs found) is skipped."""
    planes = []
    for n, d in _plane_dirs(folder):
        if (d / "F.npy").is_file() or (d / "stat.npy").is_file():
            planes.append((n, d))
        else:
            logger.warning("%s: no F.npy or stat.npy (no ROIs detected?); plane skipped", d)
    if not planes:
        raise InputError(folder, "no plane*/ folder holds F.npy and stat.npy")
    return planes


def _layout(path: Path) -> str | None:
    """'plane', 'combined' or 'parent' for a Suite2p folder, else None; looks at names only."""
    if not path.is_dir():
        return None
    if (path / "F.npy").is_file() and any((path / n).is_file() for n in ("stat.npy", "ops.npy")):
        return "combined" if path.name == "combined" else "plane"
    if any((d / "F.npy").is_file() for _, d in _plane_dirs(path)):
        return "parent"
    return "parent" if (path / "combined" / "F.npy").is_file() else None


def _locate(path: Path) -> tuple[str, Path]:
    """The layout and folder to read for ``path``; InputError naming what is missing."""
    if not path.exists():
        raise InputError(path, "no such folder")
    if not path.is_dir():
        raise InputError(path, "expected a Suite2p output folder, found a file; pass its folder")
    layout = _layout(path)
    if layout == "parent" and not any((d / "F.npy").is_file() for _, d in _plane_dirs(path)):
        return "combined", path / "combined"  # only combined/ has traces
    if layout is None and _layout(path / "suite2p"):
        return _locate(path / "suite2p")
    if layout is None and _plane_dirs(path):
        return "parent", path
    if layout is None and any((path / n).is_file() for n in _SUITE2P_FILES):
        return "plane", path  # incomplete: reading names the missing file
    if layout is None:
        raise InputError(path, "not a Suite2p output folder: no F.npy/stat.npy, no plane*/ folders")
    return layout, path


def _source_name(folder: Path) -> str:
    """Folder name, prefixed by its parents while they are generic (plane0, suite2p...)."""
    names: list[str] = []
    current = Path(os.path.abspath(folder))
    while current.name:
        names.insert(0, current.name)
        if not _GENERIC_DIR.fullmatch(current.name) or len(names) == 3:
            break
        current = current.parent
    return "/".join(names) or "suite2p"


# --- assembly ---------------------------------------------------------------------------------


def _nplanes(meta: _Meta, parts: list[_Rois], where: Path) -> int:
    """Planes per volume: the file's ``nplanes``, raised (with a warning) if ROIs exceed it."""
    top = max((int(p.plane.max()) for p in parts if p.n), default=0) + 1
    n = meta.nplanes or top
    if top > n:
        logger.warning(
            "%s: ROIs on plane %d but nplanes is %d (mesoscope?); timing offsets assume %d planes",
            where,
            top - 1,
            n,
            top,
        )
        n = top
    return n


def _pixel_coords(shape: tuple[int, int]) -> dict:
    """``y``/``x`` pixel centres at the integer indices that stat's ypix/xpix use."""
    return {
        "y": ("y", np.arange(shape[0], dtype=np.float64), {"units": "pixels"}),
        "x": ("x", np.arange(shape[1], dtype=np.float64), {"units": "pixels"}),
    }


def _images(metas: list[_Meta], planes: list[int]) -> tuple[dict, dict]:
    """``mean_image`` (y, x), or (plane, y, x) when several planes share Ly/Lx; and coords."""
    images = [m.mean_image for m in metas if m.mean_image is not None]
    if len(images) < len(metas) or len({im.shape for im in images}) != 1:
        if len(images) > 1:
            logger.info(
                "%s: planes differ in Ly/Lx or lack meanImg; no mean image", metas[0].folder
            )
        return {}, {}
    coords = _pixel_coords(images[0].shape)
    if len(images) == 1:
        return {"mean_image": (("y", "x"), images[0])}, coords
    coords["plane"] = ("plane", np.asarray(planes, dtype=np.int16))
    return {"mean_image": (("plane", "y", "x"), np.stack(images))}, coords


def _footprints(parts: list[_Rois], keeps: list[np.ndarray]) -> dict:
    """Flat pixel lists of the kept ROIs; ``footprint_roi`` is the position along ``roi``."""
    cols: list[list[np.ndarray]] = [[], [], [], []]
    start = 0
    for part, keep in zip(parts, keeps, strict=True):
        position = np.full(part.n, -1, dtype=np.int64)
        position[keep] = start + np.arange(keep.size)
        owner = position[np.repeat(np.arange(part.n), part.counts)]
        mask = owner >= 0
        for col, values in zip(cols, (owner, *part.pixels), strict=True):
            col.append(values[mask])
        start += keep.size
    roi, y, x, lam = (np.concatenate(c) for c in cols)
    return {
        "footprint_roi": ("pix", roi.astype(np.int32)),
        "footprint_y": ("pix", y.astype(np.int32)),
        "footprint_x": ("pix", x.astype(np.int32)),
        "footprint_weight": ("pix", lam.astype(np.float32)),
    }


def _selection(parts: list[_Rois], all_rois: bool, folder: Path) -> list[np.ndarray]:
    """Indices of the ROIs to keep in each part: cells (iscell == 1) unless ``all_rois``."""
    single = len(parts) == 1
    n = sum(p.n for p in parts)
    if n == 0:
        where = parts[0].folder / "F.npy" if single else folder
        raise InputError(where, "no ROIs: F.npy has 0 rows (Suite2p detected nothing)")
    keeps = [
        np.arange(p.n) if all_rois or p.iscell is None else np.flatnonzero(p.iscell) for p in parts
    ]
    if sum(k.size for k in keeps) == 0:
        where = parts[0].folder / "iscell.npy" if single else folder
        raise InputError(
            where,
            f"none of the {n} ROIs is marked as a cell in iscell.npy; "
            "pass --all-rois to keep them all",
        )
    return keeps


def _roi_vars(parts: list[_Rois], keeps: list[np.ndarray], n_frames: int) -> dict:
    """Lazy (time, roi) traces, cell labels and footprints of the kept ROIs."""
    import dask.array as da

    pairs = list(zip(parts, keeps, strict=True))
    data_vars: dict[str, Any] = {}
    for name in (n for n in TRACE_NAMES if all(n in p.traces for p in parts)):
        blocks = [
            _lazy_trace(p.traces[name], k, p.frames_valid, n_frames) for p, k in pairs if k.size
        ]
        data_vars[name] = (("time", "roi"), da.concatenate(blocks, axis=0).T)
    for name in ("iscell", "cell_prob"):
        labels = [(getattr(p, name), k) for p, k in pairs]
        if all(values is not None for values, _ in labels):
            data_vars[name] = ("roi", np.concatenate([v[k] for v, k in labels]))
    data_vars.update(_footprints(parts, keeps))
    return data_vars


def _roi_coords(parts: list[_Rois], keeps: list[np.ndarray], rate: float, nplanes: int) -> dict:
    """ROI ids (index in the plane-order concatenation), centroids, planes, time offsets."""
    pairs = list(zip(parts, keeps, strict=True))
    offsets = np.cumsum([0] + [p.n for p in parts[:-1]])
    plane = np.concatenate([p.plane[k] for p, k in pairs])
    med = np.concatenate([p.med[k] for p, k in pairs])
    return {
        "roi": ("roi", np.concatenate([o + k for o, k in zip(offsets, keeps, strict=True)])),
        "roi_y": ("roi", med[:, 0], {"units": "pixels"}),
        "roi_x": ("roi", med[:, 1], {"units": "pixels"}),
        "roi_plane": ("roi", plane.astype(np.int16)),
        "roi_time_offset": ("roi", plane / (rate * nplanes), {"units": "s"}),
    }


def _build(
    parts: list[_Rois],
    metas: list[_Meta],
    folder: Path,
    *,
    planes: list[int],
    fs: float | None,
    neuropil: float | None,
    all_rois: bool,
    movie: bool,
) -> xr.Dataset:
    """The Recording of ``parts`` (one per plane folder, or one for a plane/combined folder)."""
    rate = _rate(metas, fs, folder)
    coef = _neuropil(metas[0], neuropil, folder)
    nplanes = _nplanes(metas[0], parts, folder)
    keeps = _selection(parts, all_rois, folder)
    n_frames = max(p.n_frames for p in parts)
    data_vars = _roi_vars(parts, keeps, n_frames)
    coords = _roi_coords(parts, keeps, rate, nplanes)
    images, image_coords = _images(metas, planes)
    data_vars.update(images)
    coords.update(image_coords)
    frames = _movie(parts[0].folder, metas[0], n_frames) if movie else None
    if frames is not None:
        data_vars["movie"] = (("time", "y", "x"), frames)
        coords.update(_pixel_coords(frames.shape[1:]))
    ds = new_recording(
        data_vars,
        time=frame_times(n_frames, rate),
        fs=rate,
        source_format="suite2p",
        source_name=_source_name(folder),
        coords=coords,
        attrs={
            "source_version": metas[0].version,
            "neuropil_coefficient": coef,
            "nplanes": nplanes,
        },
    )
    return _mark_bad_frames(ds, metas, n_frames)


class Suite2pReader(Reader):
    """Suite2p output: a plane folder, a ``suite2p/`` folder of ``plane*/`` or ``combined/``."""

    name = "suite2p"
    description = "Suite2p output folder (planeN/, suite2p/ with plane*/ folders, or combined/)"

    def guess_can_open(self, path: Path) -> bool:
        """True for a Suite2p plane, parent or combined folder (file names only; never raises)."""
        try:
            path = Path(path)
            return _layout(path) is not None or _layout(path / "suite2p") is not None
        except (OSError, TypeError, ValueError):
            return False

    def open(
        self,
        path: Path,
        *,
        fs: float | None = None,
        neuropil: float | None = None,
        all_rois: bool = False,
    ) -> xr.Dataset:
        """Open a Suite2p folder as a lazy Recording (cells only unless ``all_rois``).

        ``fs`` overrides the sampling rate (Hz per plane) and ``neuropil`` the neuropil
        coefficient recorded by Suite2p.
        """
        layout, folder = _locate(Path(path))
        if layout == "parent":
            dirs = _planes_with_rois(folder)
            metas = [_read_meta(d) for _, d in dirs]
            parts = [_read_rois(d, m, n) for (n, d), m in zip(dirs, metas, strict=True)]
            planes = [n for n, _ in dirs]
            movie = len(dirs) == 1
            if len(dirs) > 1 and any((d / "data.bin").is_file() for _, d in dirs):
                logger.info("%s: several planes, so their data.bin movies are left out", folder)
        else:
            metas = [_read_meta(folder)]
            index = None if layout == "combined" else _plane_index(folder, metas[0])
            parts = [_read_rois(folder, metas[0], index)]
            planes = [index or 0]
            movie = layout == "plane"
            if layout == "combined":
                parts[0].frames_valid = _combined_lengths(parts[0])
        return _build(
            parts,
            metas,
            folder,
            planes=planes,
            fs=fs,
            neuropil=neuropil,
            all_rois=all_rois,
            movie=movie,
        )


def _plane_index(folder: Path, meta: _Meta) -> int:
    """Plane of a single plane folder: ``iplane`` from its metadata, else its name, else 0."""
    if meta.iplane is not None:
        return meta.iplane
    match = _PLANE_DIR.fullmatch(folder.name)
    return int(match.group(1)) if match else 0


register(Suite2pReader)
