"""The ``nwb`` reader: processed optical physiology in NWB 2 files (pynwb, the ``nwb`` extra).

Owns NWB input, following the NWB core schema (``nwb.ophys``): one ``RoiResponseSeries``
inside ``processing['ophys']``, from a ``DfOverF`` (becomes ``dff``) or ``Fluorescence``
(becomes ``F``) container; its rate or timestamps (the imaging plane's rate as a last
resort); and the footprints of the ``PlaneSegmentation`` rows its ``rois`` region selects.

- Choice of series: ``series`` names it ("Container/series", "series" or a container with
  one series); otherwise the only ΔF/F series, else the only fluorescence series. Series
  of the same name and shape in sibling containers join it (``DfOverF`` → ``dff``,
  ``Fluorescence`` → ``F``, Suite2p's ``Neuropil`` → ``Fneu`` and ``Deconvolved`` → ``spks``).
- Footprints: ``pixel_mask`` / ``voxel_mask`` (x, y[, z], weight) or dense ``image_mask``
  (roi, num_x, num_y), x being the column and y the row as the schema says. Suite2p's own
  export (``suite2p.io.nwb.save_nwb``) stores (ypix, xpix, lam) in the (x, y, weight)
  fields and its background images as (Ly, Lx): files it wrote (PlaneSegmentation
  description "suite2p output" or session description "suite2p_proc") are swapped back;
  ``swap_xy`` forces either reading. Suite2p's ``iscell`` column gives ``iscell`` and
  ``cell_prob``, its ``Backgrounds_<plane>/meanImg`` the ``mean_image``.

Trace data stay lazy (dask over the HDF5 dataset); masks and timestamps are read at open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cst_neuro.errors import InputError
from cst_neuro.io._common import as_traces, footprint_vars, lazy_h5, resolve_fs, sniff
from cst_neuro.io.base import Reader, register
from cst_neuro.schema import new_recording

log = logging.getLogger(__name__)

SUITE2P_VARS = {"Neuropil": "Fneu", "Deconvolved": "spks"}
PIX = {"units": "pixels"}


@dataclass
class _Series:
    """One RoiResponseSeries and the data variable it becomes."""

    container: str
    name: str
    var: str
    obj: Any

    @property
    def label(self) -> str:
        return f"{self.container}/{self.name}"


def list_series(ophys: Any) -> list[_Series]:
    """Every RoiResponseSeries in DfOverF / Fluorescence containers of the ophys module."""
    from pynwb.ophys import DfOverF, Fluorescence

    found = []
    for cname, iface in ophys.data_interfaces.items():
        if isinstance(iface, DfOverF):
            var = "dff"
        elif isinstance(iface, Fluorescence):
            var = SUITE2P_VARS.get(cname, "F")
        else:
            continue
        found += [_Series(cname, s, var, obj) for s, obj in iface.roi_response_series.items()]
    return found


def choose_series(path: Path, found: list[_Series], series: str | None) -> _Series:
    """The series named by ``series``, else the only ΔF/F one, else the only F one."""
    names = ", ".join(s.label for s in found) or "none"
    if series is not None:
        hits = [s for s in found if series in (s.label, s.name)]
        hits = hits or [s for s in found if s.container == series]
        if len(hits) == 1:
            return hits[0]
        what = "matches several" if hits else "matches none"
        raise InputError(path, f"--series {series!r} {what} of the series ({names})")
    for var in ("dff", "F"):
        hits = [s for s in found if s.var == var]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise InputError(path, f"several {var} series ({names}); pass --series NAME")
    raise InputError(path, f"no Fluorescence or DfOverF series in processing['ophys'] ({names})")


def siblings(main: _Series, found: list[_Series]) -> list[_Series]:
    """Series of the same name and shape, over the same ROIs, in other containers."""
    taken, out = {main.var}, []
    rows = np.asarray(main.obj.rois.data[:])
    for s in found:
        same = s.name == main.name and s.var not in taken and s.container != main.container
        same = same and s.obj.rois.table is main.obj.rois.table
        same = same and tuple(s.obj.data.shape) == tuple(main.obj.data.shape)
        if same and np.array_equal(np.asarray(s.obj.rois.data[:]), rows):
            out.append(s)
            taken.add(s.var)
    return out


def trace_array(path: Path, s: _Series, n_rois: int) -> Any:
    """A series' data as lazy (time, roi) float32, checked against its ROI count."""
    import h5py

    data = s.obj.data
    if isinstance(data, h5py.Dataset):
        arr = lazy_h5(Path(data.file.filename), data.name)
    else:
        arr = np.asarray(data)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_rois:
        raise InputError(
            path, f"series {s.label} has shape {arr.shape}, expected (time, {n_rois} ROIs)"
        )
    return as_traces(arr, 0)


def series_times(path: Path, s: Any, n_frames: int, fs: float | None) -> tuple[np.ndarray, float]:
    """Frame times (s) and rate: option, series rate, timestamps, imaging-plane rate."""
    t = None if s.timestamps is None else np.asarray(s.timestamps[:], dtype=np.float64)
    if t is not None:
        if t.shape != (n_frames,):
            raise InputError(path, f"{t.size} timestamps for {n_frames} frames in {s.name}")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise InputError(path, f"timestamps of {s.name} are not finite and increasing")
    stored = s.rate
    if stored is None and (t is None or t.size < 2):
        stored = getattr(getattr(s.rois.table, "imaging_plane", None), "imaging_rate", None)
    rate = resolve_fs(path, fs, stored, t)
    if t is None:
        t0 = float(s.starting_time or 0.0)
        t = t0 + np.arange(n_frames, dtype=np.float64) / rate  # an fs option overrides
    return t, rate


Masks = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]


def _masks(table: Any, name: str, rows: np.ndarray) -> Masks | None:
    """(position, x, y, z, weight) of a ragged pixel/voxel mask column, rows in order."""
    if name not in table.colnames:
        return None
    index = table[name]
    ends = np.asarray(index.data[:], dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    flat = np.asarray(index.target.data[:])
    fields = flat.dtype.names or ()
    cols = [flat[f] for f in fields] if fields else list(np.asarray(flat, dtype=np.float64).T)
    take = [np.arange(starts[r], ends[r]) for r in rows]
    pos = np.repeat(np.arange(len(rows)), [len(t) for t in take])
    sel = np.concatenate(take) if take else np.zeros(0, np.int64)
    x, y, w = cols[0][sel], cols[1][sel], cols[-1][sel]
    z = cols[2][sel] if len(cols) == 4 else None
    return pos, x, y, z, w


def _image_masks(path: Path, table: Any, rows: np.ndarray) -> tuple[Any, ...] | None:
    """Pixel lists and (num_x, num_y) of the dense ``image_mask`` of the selected rows."""
    if "image_mask" not in table.colnames:
        return None
    data = table["image_mask"].data
    if len(data.shape) != 3:
        log.warning("%s: image_mask has shape %s; only 2-D masks are read", path, data.shape)
        return None
    parts = []
    for i, r in enumerate(rows):
        m = np.asarray(data[int(r)], dtype=np.float64)
        x, y = np.nonzero(np.isfinite(m) & (m != 0))
        parts.append((np.full(x.size, i), x, y, m[x, y]))
    pos, x, y, w = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return (pos, x, y, None, w), tuple(data.shape[1:])


def read_footprints(path: Path, table: Any, rows: np.ndarray, swap: bool) -> dict[str, Any]:
    """Footprint data vars, centroid coords, and the FOV size (from image masks)."""
    found = _masks(table, "pixel_mask", rows) or _masks(table, "voxel_mask", rows)
    shape = None
    if found is None:
        dense = _image_masks(path, table, rows)
        if dense is None:
            log.warning("%s: no pixel, voxel or 2-D image masks; no footprints", path)
            return {"vars": {}, "coords": {}, "shape": None}
        found, shape = dense
    pos, x, y, z, w = found
    if swap:
        x, y = y, x
        shape = None if shape is None else shape[::-1]
    fp, centroids = footprint_vars(path, pos, y, x, w, len(rows))
    if z is not None:
        first = np.full(len(rows), -1, dtype=np.int64)
        first[pos[::-1]] = np.asarray(z)[::-1]
        centroids["roi_plane"] = ("roi", first.astype(np.int16))
    fov = None if shape is None else (shape[1], shape[0])  # (num_x, num_y) → (ny, nx)
    return {"vars": fp, "coords": centroids, "shape": fov}


def cell_labels(table: Any, rows: np.ndarray) -> dict[str, Any]:
    """``iscell`` (and Suite2p's ``cell_prob``) from an ``iscell`` column, if present."""
    if "iscell" not in table.colnames:
        return {}
    try:
        values = np.asarray(table["iscell"].data[:], dtype=np.float64)[rows]
    except (TypeError, ValueError, IndexError):
        log.warning("%s: the iscell column is not numeric; ignored", table.name)
        return {}
    if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] < 2):
        return {}
    if values.ndim == 1:
        return {"iscell": ("roi", values > 0.5)}
    return {
        "iscell": ("roi", values[:, 0] > 0.5),
        "cell_prob": ("roi", values[:, 1].astype(np.float32)),
    }


def written_by_suite2p(nwbfile: Any, table: Any) -> bool:
    """Whether Suite2p's own exporter wrote the file (it labels both of these)."""
    return (
        getattr(table, "description", None) == "suite2p output"
        or getattr(nwbfile, "session_description", None) == "suite2p_proc"
    )


def suite2p_mean_image(ophys: Any, main: _Series, swap: bool) -> np.ndarray | None:
    """Suite2p's ``Backgrounds_<plane>/meanImg`` for the series' plane, as (y, x)."""
    plane = main.name.removeprefix("plane") if main.name.startswith("plane") else "0"
    images = ophys.data_interfaces.get(f"Backgrounds_{plane}")
    if images is None or "meanImg" not in getattr(images, "images", {}):
        return None
    img = np.asarray(images.images["meanImg"].data[:], dtype=np.float32)
    return img if swap else img.T


class NWBReader(Reader):
    """NWB 2 ophys: a RoiResponseSeries with its PlaneSegmentation footprints (pynwb)."""

    name = "nwb"
    description = "NWB 2 optical physiology (.nwb; needs the nwb extra: pynwb)"

    def guess_can_open(self, path: Path) -> bool:
        """An HDF5 file named ``.nwb``, or any HDF5 file with an ``nwb_version`` attribute."""
        try:
            path = Path(path)
            if not path.is_file():
                return False
            if sniff(path) not in ("hdf5", "mat73"):
                return False
            if path.suffix.lower() == ".nwb":
                return True
            import h5py

            with h5py.File(path, "r") as f:
                return "nwb_version" in f.attrs
        except Exception:
            return False

    def open(
        self,
        path: Path,
        *,
        fs: float | None = None,
        series: str | None = None,
        swap_xy: bool | None = None,
    ) -> xr.Dataset:
        """Read one ROI response series (lazy) with its footprints as a Recording."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such file" if not path.exists() else "not a file")
        pynwb = _import_pynwb(path)
        try:
            io = pynwb.NWBHDF5IO(str(path), "r")
        except Exception as e:  # h5py/hdmf raise many types for a file that is not NWB
            raise InputError(path, f"not a readable NWB file ({e})") from e
        with io:
            try:
                nwbfile = io.read()
            except Exception as e:  # hdmf's build errors share no base with OSError
                raise InputError(path, f"not a readable NWB file ({e})") from e
            try:
                parts = _read_parts(path, nwbfile, fs, series, swap_xy)
            except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
                if isinstance(e, InputError):
                    raise
                raise InputError(path, f"cannot read the ophys data ({e})") from e
        return _assemble(path, parts)


def _import_pynwb(path: Path) -> Any:
    try:
        import pynwb
    except ImportError as e:
        raise InputError(path, "reading NWB needs pynwb: pip install 'cst-neuro[nwb]'") from e
    return pynwb


def _read_parts(
    path: Path, nwbfile: Any, fs: float | None, series: str | None, swap_xy: bool | None
) -> dict[str, Any]:
    """Everything the Recording needs, read while the file is open (traces stay lazy)."""
    ophys = nwbfile.processing.get("ophys")
    if ophys is None:
        raise InputError(path, "no processing['ophys'] module: not processed ophys data")
    found = list_series(ophys)
    main = choose_series(path, found, series)
    table, rows = main.obj.rois.table, np.asarray(main.obj.rois.data[:], dtype=np.int64)
    if rows.size == 0:
        raise InputError(path, f"series {main.label} selects no ROIs")
    traces = {s.var: trace_array(path, s, rows.size) for s in [main, *siblings(main, found)]}
    n_frames = traces[main.var].shape[0]
    if n_frames == 0:
        raise InputError(path, f"series {main.label} has no frames")
    time, rate = series_times(path, main.obj, n_frames, fs)
    suite2p = written_by_suite2p(nwbfile, table)
    swap = suite2p if swap_xy is None else bool(swap_xy)
    return {
        "main": main,
        "traces": traces,
        "time": time,
        "fs": rate,
        "ids": np.asarray(table.id.data[:], dtype=np.int64)[rows],
        "footprints": read_footprints(path, table, rows, swap),
        "labels": cell_labels(table, rows),
        "mean_image": suite2p_mean_image(ophys, main, swap) if suite2p else None,
        "attrs": {"nwb_series": main.label, "nwb_swap_xy": int(swap), "suite2p_nwb": int(suite2p)},
    }


def _assemble(path: Path, parts: dict[str, Any]) -> xr.Dataset:
    kind = {"dff": "dff", "F": "fluorescence", "Fneu": "neuropil", "spks": "deconvolved"}
    data_vars: dict[str, Any] = {
        var: xr.Variable(("time", "roi"), arr, {"trace_kind": kind[var]})
        for var, arr in parts["traces"].items()
    }
    fp = parts["footprints"]
    data_vars.update(fp["vars"])
    data_vars.update(parts["labels"])
    coords: dict[str, Any] = {"roi": ("roi", parts["ids"]), **fp["coords"]}
    shape = fp["shape"]
    if parts["mean_image"] is not None:
        data_vars["mean_image"] = (("y", "x"), parts["mean_image"])
        shape = parts["mean_image"].shape
    if shape is not None:
        coords["y"] = ("y", np.arange(shape[0], dtype=np.float64), PIX)
        coords["x"] = ("x", np.arange(shape[1], dtype=np.float64), PIX)
    return new_recording(
        data_vars,
        time=parts["time"],
        fs=parts["fs"],
        source_format="nwb",
        source_name=path.name,
        coords=coords,
        attrs={**parts["attrs"], "source_version": _nwb_version(path)},
    )


def _nwb_version(path: Path) -> str:
    """The file's ``nwb_version`` root attribute ("" when absent)."""
    import h5py

    with h5py.File(path, "r") as f:
        value = f.attrs.get("nwb_version", "")
    return value.decode() if isinstance(value, bytes) else str(value)


register(NWBReader)
