"""The ``caiman`` reader: CaImAn CNMF results (spatial footprints A, temporal traces C).

Owns CaImAn's two result files:

- ``.npz`` archives as CaImAn's demos and tests save them: ``A_full`` or ``A``, a pickled
  scipy sparse matrix (pixels × components), ``C_full`` or ``C`` (components × frames),
  optionally ``dims`` or ``d1``/``d2`` and ``information['params']`` with the frame rate.
  Pickled members load only through ``safe_pickle.load_npz_object(allow_sparse=True)``.
- HDF5 files written by ``CNMF.save()`` (``caiman.utils.utils.save_dict_to_hdf5``): group
  ``estimates`` with ``A`` stored as CSC ``data``/``indices``/``indptr``/``shape``, ``C``,
  ``dims``, ``idx_components``; the rate in ``params/data/fr``; None saved as "NoneType".

A column of A is a d1 × d2 image flattened in Fortran order (CaImAn's convention), so
pixel p sits at y = p % d1, x = p // d1. The image size comes from the file, else ``dims``,
else a square image when the pixel count is a perfect square (logged), else an error.
Traces are ``F(time, roi)`` with ``trace_kind`` "caiman_C" (denoised, not ΔF/F).
"""

from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.io._common import (
    ZIP_ERRORS,
    as_traces,
    footprint_vars,
    lazy_h5,
    resolve_fs,
    sniff,
)
from cst_neuro.io.base import Reader, register
from cst_neuro.io.safe_pickle import load_npz_object
from cst_neuro.schema import frame_times, new_recording

log = logging.getLogger(__name__)

A_KEYS = ("A_full", "A")
C_KEYS = ("C_full", "C")
RATE_KEYS = ("final_frate", "fr")


def sparse_pixels(
    path: Path, A: Any, d1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(roi, y, x, weight) of the nonzero entries of A (pixels × components, Fortran)."""
    import scipy.sparse as sp

    try:
        coo = sp.coo_matrix(A)
    except (TypeError, ValueError) as e:
        raise InputError(path, f"footprints A are not a 2-D numeric matrix ({e})") from e
    keep = coo.data != 0
    pixel, roi, w = coo.row[keep], coo.col[keep], coo.data[keep]
    return roi, pixel % d1, pixel // d1, w


def image_dims(
    path: Path, n_pix: int, stored: tuple[int, int] | None, dims: tuple[int, int] | None
) -> tuple[int, int]:
    """(d1, d2): the file's, else the option's, else a square image; must cover A's pixels."""
    if stored is not None and dims is not None and tuple(stored) != tuple(dims):
        raise InputError(path, f"the file says dims {tuple(stored)} but --dims says {dims}")
    chosen = stored or dims
    if chosen is None:
        side = math.isqrt(n_pix)
        if side * side != n_pix:
            raise InputError(path, f"{n_pix} pixels per footprint; pass --dims D1 D2")
        log.info("%s: no image size in the file; assuming a square %d×%d image", path, side, side)
        chosen = (side, side)
    d1, d2 = (int(v) for v in chosen)
    if d1 <= 0 or d2 <= 0 or d1 * d2 != n_pix:
        raise InputError(path, f"image dims {d1}×{d2} do not match {n_pix} pixels per footprint")
    return d1, d2


def _npz_names(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return {n.removesuffix(".npy") for n in zf.namelist()}
    except ZIP_ERRORS as e:
        raise InputError(path, f"not a readable .npz archive ({e})") from e


def _rate_in(mapping: Any) -> Any:
    """``final_frate``/``fr`` in ``mapping['params']`` or in ``mapping`` itself, as stored
    (``resolve_fs`` checks it)."""
    for scope in (mapping.get("params") if isinstance(mapping, dict) else None, mapping):
        if isinstance(scope, dict):
            for k in RATE_KEYS:
                if scope.get(k) is not None:
                    return scope[k]
    return None


def read_npz(path: Path) -> dict[str, Any]:
    """A, C, stored dims, rate and accepted components from a CaImAn ``.npz``."""
    names = _npz_names(path)
    a_key = next((k for k in A_KEYS if k in names), None)
    c_key = next((k for k in C_KEYS if k in names), None)
    if a_key is None or c_key is None:
        raise InputError(path, "not a CaImAn result: needs A (or A_full) and C (or C_full)")

    def get(key: str) -> Any:
        return load_npz_object(path, key, allow_sparse=True) if key in names else None

    dims = get("dims")
    if dims is None and {"d1", "d2"} <= names:
        dims = (get("d1"), get("d2"))
    rate = next((_rate_in({k: get(k)}) for k in RATE_KEYS if k in names), None)
    if rate is None and "information" in names:
        rate = _rate_in(get("information"))
    return {
        "A": get(a_key),
        "C": np.asarray(get(c_key)),
        "dims": _as_dims(path, dims),
        "fs": rate,
        "accepted": get("idx_components"),
        "keys": (a_key, c_key),
    }


def _as_dims(path: Path, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        flat = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InputError(path, f"image dims {value!r} are not numbers") from e
    if flat.size < 2 or np.any(flat[2:] != 1):  # a 3-D CaImAn run would have d3 > 1
        raise InputError(path, f"image dims {tuple(flat)} are not those of a 2-D image")
    return int(flat[0]), int(flat[1])


def _h5_get(group: Any, key: str) -> Any:
    """A dataset's value, or None where it is missing or CaImAn's "NoneType" marker."""
    import h5py

    obj = group.get(key)
    if obj is None or not isinstance(obj, h5py.Dataset):
        return obj
    value = obj[()]
    if isinstance(value, bytes | str) or getattr(value, "dtype", np.dtype(int)).kind in "OSU":
        return None
    return value


def read_hdf5(path: Path) -> dict[str, Any]:
    """A, C (lazy), stored dims, rate and accepted components from ``CNMF.save()`` HDF5."""
    import h5py
    import scipy.sparse as sp

    try:
        with h5py.File(path, "r") as f:
            est = f.get("estimates")
            if est is None or est.get("A") is None or _h5_get(est, "C") is None:
                raise InputError(path, "not a CaImAn result: needs estimates/A and estimates/C")
            a = est["A"]
            if isinstance(a, h5py.Group):
                parts = [a[k][()] for k in ("data", "indices", "indptr", "shape")]
                A = sp.csc_matrix(tuple(parts[:3]), shape=tuple(int(v) for v in parts[3]))
            else:
                A = a[()]
            dims = next((d for d in _dims_candidates(f) if d is not None), None)
            rate = _h5_get(f, "params/data/fr")
            accepted = _h5_get(est, "idx_components")
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise InputError(path, f"cannot read the CaImAn HDF5 file ({e})") from e
    fs = rate  # resolve_fs checks it
    C = lazy_h5(path, "estimates/C")
    return {
        "A": A,
        "C": C,
        "dims": _as_dims(path, dims),
        "fs": fs,
        "accepted": accepted,
        "keys": ("estimates/A", "estimates/C"),
    }


def _dims_candidates(f: Any) -> list[Any]:
    return [_h5_get(f, "estimates/dims"), _h5_get(f, "dims"), _h5_get(f, "params/data/dims")]


class CaimanReader(Reader):
    """CaImAn CNMF results: footprints A and traces C (.npz or ``CNMF.save()`` HDF5)."""

    name = "caiman"
    description = "CaImAn CNMF results (.npz with A/C, or HDF5 from cnm.save())"

    def guess_can_open(self, path: Path) -> bool:
        """An ``.npz`` with A and C members, or an HDF5 file with ``estimates/A`` and ``C``."""
        try:
            path = Path(path)
            suffix = path.suffix.lower()
            if not path.is_file():
                return False
            if suffix == ".npz":
                names = _npz_names(path)
                return bool(names & set(A_KEYS)) and bool(names & set(C_KEYS))
            if suffix in (".hdf5", ".h5"):
                return _looks_like_cnmf_hdf5(path)
            return False
        except Exception:
            return False

    def open(
        self, path: Path, *, fs: float | None = None, dims: tuple[int, int] | None = None
    ) -> xr.Dataset:
        """Read footprints and traces as a Recording (``F`` from C, sparse footprints)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such file" if not path.exists() else "not a file")
        kind = _file_kind(path)
        res = read_npz(path) if kind == "npz" else read_hdf5(path)
        C, A = res["C"], res["A"]
        n_roi, n_frames = check_shapes(path, A, C)
        d1, d2 = image_dims(path, A.shape[0], res["dims"], dims)
        fs = resolve_fs(path, fs, res["fs"])
        fp, centroids = footprint_vars(path, *sparse_pixels(path, A, d1), n_roi)
        data_vars: dict[str, Any] = {
            "F": xr.Variable(("time", "roi"), as_traces(C, 1), {"trace_kind": "caiman_C"}),
            **fp,
        }
        if res["accepted"] is not None:
            data_vars["iscell"] = ("roi", _accepted_mask(path, res["accepted"], n_roi))
        pix = {"units": "pixels"}
        coords = {
            "roi": ("roi", np.arange(n_roi, dtype=np.int64)),
            **centroids,
            "y": ("y", np.arange(d1, dtype=np.float64), pix),
            "x": ("x", np.arange(d2, dtype=np.float64), pix),
        }
        return new_recording(
            data_vars,
            time=frame_times(n_frames, fs),
            fs=fs,
            source_format="caiman",
            source_name=path.name,
            coords=coords,
            attrs={"source_version": kind, "source_keys": ",".join(res["keys"])},
        )


def check_shapes(path: Path, A: Any, C: Any) -> tuple[int, int]:
    """(components, frames) once A (pixels × K) and C (K × T) are known to agree."""
    if getattr(C, "ndim", 0) != 2 or getattr(A, "ndim", 0) != 2:
        raise InputError(path, "A and C must be 2-D (pixels × components, components × T)")
    if C.dtype.kind not in "iuf":
        raise InputError(path, f"C holds {C.dtype} values, not numbers")
    n_roi, n_frames = C.shape
    if n_roi == 0 or n_frames == 0:
        raise InputError(path, f"C has shape {C.shape}: no components or no frames")
    if A.shape[1] != n_roi:
        raise InputError(path, f"A has {A.shape[1]} components but C has {n_roi}")
    return n_roi, n_frames


def _accepted_mask(path: Path, accepted: Any, n_roi: int) -> np.ndarray:
    idx = np.asarray(accepted).reshape(-1)
    if idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= n_roi)):
        raise InputError(path, f"idx_components is not a list of indices below {n_roi}")
    mask = np.zeros(n_roi, dtype=bool)
    mask[idx] = True
    return mask


def _file_kind(path: Path) -> str:
    kind = sniff(path)
    if kind not in ("npz", "hdf5"):
        raise InputError(path, "not a CaImAn .npz or HDF5 file (unrecognised header)")
    return kind


def _looks_like_cnmf_hdf5(path: Path) -> bool:
    import h5py

    if sniff(path) != "hdf5":
        return False
    with h5py.File(path, "r") as f:
        est = f.get("estimates")
        return isinstance(est, h5py.Group) and "A" in est and "C" in est


register(CaimanReader)
