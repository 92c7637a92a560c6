"""Writers: stream a simulation to Suite2p output folders and to ImageJ TIFF movies.

``write_suite2p`` produces the folders Suite2p itself writes (see ``_suite2p_meta``):
``layout="v0"``, Suite2p 0.x: ``plane*/`` with ``F.npy``, ``Fneu.npy``, ``spks.npy``
(float32, (n_rois, n_frames)), ``stat.npy``, ``iscell.npy``, ``ops.npy``;
``layout="v1"``, Suite2p 1.x: top-level ``db.npy`` and ``settings.npy``, and ``plane*/``
with the same arrays plus ``db.npy``, ``settings.npy``, ``reg_outputs.npy``,
``detect_outputs.npy``, ``zcorr.npy``. ``data_bin=True`` adds each plane's movie as
``data.bin`` (int16, (n_frames, Ly, Lx)).

Both writers stream: ``.npy`` files are created full-size with ``open_memmap`` and each
chunk of frames is written into its columns with positioned writes (no mapping, so the
written pages never count against the process), movie frames are rendered a few at a
time, and the per-ROI statistics of ``stat.npy`` are accumulated along the way. Memory
is bounded by one chunk: about 150 bytes per ROI and frame of ``chunk_frames``.

Both are atomic (``cst_neuro.atomic``): a Suite2p folder is filled under a temporary
sibling and renamed into place, holding a ``.cst-neuro-simulation`` marker, and a movie
carries ``cst_neuro=simulation`` in its ImageJ metadata. ``overwrite`` replaces only
outputs so marked, never a real Suite2p folder or movie.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cst_neuro.atomic import OutputKind, atomic_file, atomic_folder, check_output
from cst_neuro.errors import InputError, OutputError
from cst_neuro.io.movie import MARK_KEY, tiff_mark
from cst_neuro.simulate import _suite2p_meta as meta
from cst_neuro.simulate.config import SimulationConfig
from cst_neuro.simulate.layout import Footprints, neuropil_masks
from cst_neuro.simulate.recording import Block, SimulatedRecording

TRACES = ("F", "Fneu", "spks")
LAYOUTS = ("v0", "v1")
MARKER = ".cst-neuro-simulation"  # in every simulated Suite2p folder: --overwrite replaces it
SIMULATION = OutputKind(
    "a Suite2p folder simulated by cst-neuro",
    folder=True,
    recognise=lambda p: (p / MARKER).is_file(),
)
MOVIE_MARK = "simulation"  # in the ImageJ metadata of simulated movies
MOVIE = OutputKind(
    "a movie simulated by cst-neuro", folder=False, recognise=lambda p: tiff_mark(p) == MOVIE_MARK
)


def write_suite2p(
    sim: SimulatedRecording,
    folder: str | os.PathLike[str],
    *,
    layout: str = "v0",
    data_bin: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``sim`` as a Suite2p output folder (the ``suite2p/`` holding ``plane0/``...)."""
    if layout not in LAYOUTS:
        raise InputError(None, f"unknown Suite2p layout {layout!r}; choose from v0, v1")
    folder = _check_folder(Path(folder), overwrite=overwrite)
    with atomic_folder(folder, overwrite=True) as tmp:
        _write_planes(sim, folder, tmp, layout=layout, data_bin=data_bin)
        (tmp / MARKER).write_text("written by cst-neuro simulate; --overwrite may replace it\n")
    return folder


def _write_planes(
    sim: SimulatedRecording, folder: Path, into: Path, *, layout: str, data_bin: bool
) -> None:
    """Write the planes of the Suite2p folder ``folder`` into ``into`` (its temporary)."""
    planes: list[_PlaneWriter] = []
    try:
        for p in range(sim.config.n_planes):
            planes.append(_PlaneWriter(sim, folder, into, p, layout=layout, data_bin=data_bin))
        for block in sim.blocks():
            for writer in planes:
                writer.add(block)
    finally:
        for writer in planes:
            writer.close()
    for writer in planes:
        writer.finish()
    if layout == "v1":
        info = planes[0].info
        _save_object(into / "db.npy", meta.db_v1(info, plane_level=False))
        _save_object(into / "settings.npy", meta.settings_v1(info))


class _PlaneWriter:
    """One ``plane{p}/`` folder, filled block by block and finished with its metadata."""

    def __init__(
        self,
        sim: SimulatedRecording,
        folder: Path,
        into: Path,
        plane: int,
        *,
        layout: str,
        data_bin: bool,
    ) -> None:
        cfg = sim.config
        self.sim, self.plane, self.layout = sim, plane, layout
        self.rois = np.flatnonzero(sim.roi_plane == plane)
        self.path = into / f"plane{plane}"  # the metadata names ``folder``, the final place
        self.path.mkdir(parents=True, exist_ok=True)
        shape = (self.rois.size, cfg.n_frames)
        self.offset = 0
        for name in TRACES:
            mm = np.lib.format.open_memmap(self.path / f"{name}.npy", "w+", np.float32, shape)
            self.offset = mm.offset  # bytes of .npy header before the data
            del mm
        self.moments = _Moments(self.rois.size)
        self.bin = open(self.path / "data.bin", "wb") if data_bin else None  # noqa: SIM115
        self.info = meta.PlaneInfo(
            folder=folder, plane=plane, n_planes=cfg.n_planes, fs=float(cfg.fs),
            tau=float(sim.indicator.tau_decay), diameter=2 * cfg.soma_radius,
            neucoeff=float(cfg.neuropil_coefficient), ly=cfg.fov[0], lx=cfg.fov[1],
            n_frames=cfg.n_frames, mean_image=sim.mean_image(plane),
        )  # fmt: skip

    def add(self, block: Block) -> None:
        for name in TRACES:
            rows = np.ascontiguousarray(getattr(block, name)[:, self.rois].T, dtype="<f4")
            _write_columns(self.path / f"{name}.npy", rows, self.offset, block.start,
                           self.sim.n_frames)  # fmt: skip
        r = np.float32(self.sim.config.neuropil_coefficient)
        self.moments.add(block.F[:, self.rois] - r * block.Fneu[:, self.rois])
        if self.bin is not None:
            for frames in self.sim.render(block, self.plane):
                self.bin.write(np.clip(np.rint(frames), -32768, 32767).astype("<i2").tobytes())

    def close(self) -> None:
        if self.bin is not None:
            self.bin.close()

    def finish(self) -> None:
        sim, info, p = self.sim, self.info, self.path
        prob = sim.cell_prob[self.rois].astype(np.float64)
        np.save(p / "iscell.npy", np.column_stack([prob > 0.5, prob]).astype(np.float64))
        _save_object(p / "stat.npy", _stat(sim, self.rois, self.moments, layout=self.layout))
        if self.layout == "v0":
            _save_object(p / "ops.npy", meta.ops_v0(info))
            return
        _save_object(p / "db.npy", meta.db_v1(info, plane_level=True))
        _save_object(p / "settings.npy", meta.settings_v1(info))
        _save_object(p / "reg_outputs.npy", meta.reg_outputs_v1(info))
        _save_object(p / "detect_outputs.npy", meta.detect_outputs_v1(info))
        _save_object(p / "ops.npy", meta.ops_v1(info))
        np.save(p / "zcorr.npy", np.zeros(0))


def _write_columns(path: Path, rows: np.ndarray, offset: int, start: int, n_frames: int) -> None:
    """Write ``rows`` (n, T) into columns ``start:start + T`` of an (n, n_frames) float32 .npy.

    One positioned write per row: no memory map, so no page faults or read-around, and
    nothing of the file stays in this process.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        for r in range(rows.shape[0]):
            os.pwrite(fd, memoryview(rows[r]).cast("B"), offset + 4 * (r * n_frames + start))
    except OSError as e:
        raise OutputError(path, f"write failed ({e.strerror})") from e
    finally:
        os.close(fd)


class _Moments:
    """Running mean, std, skewness and a difference-based noise estimate per column."""

    def __init__(self, n: int) -> None:
        self.count = 0
        self.shift: np.ndarray | None = None
        self.sums = np.zeros((3, n))
        self.diff2 = np.zeros(n)
        self.last: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        if self.shift is None:
            self.shift = x.mean(axis=0, dtype=np.float64).astype(x.dtype)
        y = x - self.shift
        y2 = y * y
        self.sums[0] += y.sum(0, dtype=np.float64)
        self.sums[1] += y2.sum(0, dtype=np.float64)
        self.sums[2] += (y2 * y).sum(0, dtype=np.float64)
        steps = np.diff(x, axis=0, prepend=x[:1] if self.last is None else self.last)
        self.diff2 += (steps * steps).sum(0, dtype=np.float64)
        self.last = x[-1:].copy()
        self.count += x.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(std, skew, snr): snr = total variance / white-noise variance - 1."""
        m1, m2, m3 = self.sums / max(self.count, 1)
        var = np.maximum(m2 - m1**2, 1e-12)
        skew = (m3 - 3 * m1 * m2 + 2 * m1**3) / var**1.5
        noise = np.maximum(self.diff2 / max(2 * (self.count - 1), 1), 1e-12)
        return np.sqrt(var), skew, np.maximum(var / noise - 1.0, 0.0)


def _stat(sim: SimulatedRecording, rois: np.ndarray, moments: _Moments, *, layout: str):
    """The ``stat.npy`` dictionaries of one plane's ROIs (Suite2p's keys and types)."""
    fp, cfg = sim.footprints, sim.config
    ly, lx = cfg.fov
    owners = np.zeros(ly * lx, np.int64)
    sel = np.isin(fp.roi, rois)
    np.add.at(owners, fp.y[sel] * lx + fp.x[sel], 1)
    npix = np.diff(fp.indptr)[rois]
    mean_npix = float(npix.mean())
    std, skew, snr = moments.result()
    masks = neuropil_masks(_subset(fp, rois), cfg.fov) if layout == "v0" else None
    stats = np.empty(rois.size, dtype=object)
    for i, r in enumerate(rois):
        pix = fp.pixels(r)
        y, x, lam = fp.y[pix], fp.x[pix], fp.weight[pix].astype(np.float32)
        med = [int(np.median(y)), int(np.median(x))]
        mrs = float(np.average(np.hypot(y - med[0], x - med[1]), weights=lam))
        mrs0 = float(2 / 3 * np.sqrt(y.size / np.pi))
        d: dict[str, Any] = {
            "ypix": y.copy(), "xpix": x.copy(), "lam": lam, "med": med, "footprint": 1.0,
            "mrs": mrs, "mrs0": mrs0, "compact": mrs / mrs0, "npix": int(y.size),
            "npix_soma": np.int64(y.size), "soma_crop": np.ones(y.size, bool),
            "overlap": owners[y * lx + x] > 1, "radius": float(fp.radius[r]),
            "aspect_ratio": float(fp.aspect[r]),
            "npix_norm_no_crop": np.float32(y.size / mean_npix),
            "npix_norm": np.float32(y.size / mean_npix),
            "skew": np.float32(skew[i]), "std": np.float32(std[i]),
        }  # fmt: skip
        if masks is not None:  # Suite2p 0.x only
            d["solidity"] = 1.0
            d["neuropil_mask"] = masks[i]
        else:
            d["snr"] = np.float32(snr[i])
        if cfg.n_planes > 1:
            d["iplane"] = int(sim.roi_plane[r])
        stats[i] = d
    return stats


def _subset(fp: Footprints, rois: np.ndarray) -> Footprints:
    """Footprints restricted to ``rois`` (for per-plane neuropil masks)."""
    sel = np.isin(fp.roi, rois)
    new_index = np.full(fp.indptr.size - 1, -1)
    new_index[rois] = np.arange(rois.size)
    counts = np.diff(fp.indptr)[rois]
    return Footprints(
        fp.centre[rois], fp.radius[rois], fp.aspect[rois],
        np.concatenate([[0], np.cumsum(counts)]), new_index[fp.roi[sel]],
        fp.y[sel], fp.x[sel], fp.shape[sel], fp.weight[sel],
    )  # fmt: skip


def write_tiff(
    sim: SimulatedRecording, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the movie as an ImageJ hyperstack TIFF (uint16; TYX, or TZYX for planes).

    The ImageJ metadata carries ``finterval = 1 / fs`` (seconds per volume).
    """
    import tifffile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(path, f"cannot create its folder ({e.strerror or e})") from e
    path = check_output(path, MOVIE, overwrite=overwrite)
    cfg = sim.config
    planes = range(cfg.n_planes)

    def pages():
        for block in sim.blocks():
            for pieces in zip(*(sim.render(block, p) for p in planes), strict=True):
                for i in range(pieces[0].shape[0]):
                    for piece in pieces:
                        yield np.clip(np.rint(piece[i]), 0, 65535).astype(np.uint16)

    many = cfg.n_planes > 1
    shape = (cfg.n_frames, cfg.n_planes, *cfg.fov) if many else (cfg.n_frames, *cfg.fov)
    metadata = {"axes": "TZYX" if many else "TYX", "finterval": 1.0 / cfg.fs, "unit": "pixel"}
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, pages(), shape=shape, dtype=np.uint16, imagej=True,
                         metadata={**metadata, MARK_KEY: MOVIE_MARK})  # fmt: skip
    return path


def write_simulation(
    output: str | os.PathLike[str],
    *,
    layout: str = "suite2p-v1",
    overwrite: bool = False,
    data_bin: bool = False,
    config: SimulationConfig | None = None,
    **fields: Any,
) -> Path:
    """Simulate and write in one call (the ``cst-neuro simulate`` command).

    ``layout``: ``suite2p-v0`` / ``suite2p-v1`` (a Suite2p folder), ``movie`` (an ImageJ
    TIFF: ``output`` itself when it ends in .tif/.tiff, else ``output/movie.tif``) or
    ``zarr`` (a cst-neuro store of the Recording with ΔF/F, as ``ingest`` writes). ``fields``
    override ``config`` (defaults if None), e.g. ``n_rois=50, seed=3``.
    """
    config = config or SimulationConfig()
    if fields:
        config = config.replace(**fields)
    sim = SimulatedRecording(config)
    output = Path(output)
    if layout in ("suite2p-v0", "suite2p-v1"):
        version = layout.rsplit("-", 1)[1]
        return write_suite2p(sim, output, layout=version, data_bin=data_bin, overwrite=overwrite)
    if layout == "movie":
        path = output if output.suffix.lower() in (".tif", ".tiff") else output / "movie.tif"
        return write_tiff(sim, path, overwrite=overwrite)
    if layout == "zarr":
        from cst_neuro.preprocess import compute_dff
        from cst_neuro.store import write_recording

        write_recording(compute_dff(sim.recording()), output, overwrite=overwrite)
        return output
    raise InputError(
        None, f"unknown layout {layout!r}; choose from suite2p-v0, suite2p-v1, movie, zarr"
    )


def _check_folder(folder: Path, *, overwrite: bool) -> Path:
    """The folder to write: new, empty, or (with ``overwrite``) an earlier simulation."""
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        return folder
    if folder.is_dir() and not overwrite:
        raise OutputError(folder, "is not empty; pass --overwrite to replace it")
    return check_output(folder, SIMULATION, overwrite=overwrite)


def _save_object(path: Path, obj: Any) -> None:
    """Save a dict as Suite2p does (a 0-d object array) or an object array as is."""
    arr = obj if isinstance(obj, np.ndarray) else np.array(obj, dtype=object)
    np.save(path, arr, allow_pickle=True)
