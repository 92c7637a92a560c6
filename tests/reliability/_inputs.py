"""Valid inputs of every reader, and the checks the whole reliability suite shares.

Each ``Valid`` is a small, genuine input of one reader (written by the simulator or by
the library that defines the format), with the options it opens with and the files a
test may damage. ``assert_clean_cli_error`` is the contract every broken input must meet.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io
import scipy.sparse as sp
import tifffile

from cst_neuro.simulate import SimulationConfig, simulate, write_suite2p

N_FRAMES, N_ROIS, FS = 64, 5, 10.0
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Valid:
    """One genuine input: what to open, how, and which of its files to damage."""

    reader: str
    path: Path  # the file or folder given to the reader
    targets: tuple[str, ...]  # files (relative to ``root``) a case may damage
    root: Path  # the folder holding everything (copied per case)
    options: dict[str, Any] = field(default_factory=dict)

    def copy_to(self, where: Path) -> Valid:
        """The same input in a fresh folder (cases damage copies, never the original)."""
        shutil.copytree(self.root, where, symlinks=True)
        return Valid(
            self.reader,
            where / self.path.relative_to(self.root),
            self.targets,
            where,
            self.options,
        )

    def cli_args(self) -> list[str]:
        """``ingest`` options for this input."""
        args = ["--format", self.reader]
        for key, value in self.options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        return args


def _traces(rng: np.random.Generator) -> np.ndarray:
    return (100 + 10 * rng.random((N_FRAMES, N_ROIS))).astype(np.float32)  # (time, roi)


def _plane_files(*meta: str) -> tuple[str, ...]:
    files = ("F.npy", "Fneu.npy", "spks.npy", "stat.npy", "iscell.npy", *meta)
    return tuple(f"suite2p/plane0/{f}" for f in files)


# the files of each genuine input that the cases damage, one by one
TARGETS: dict[str, tuple[str, ...]] = {
    "suite2p-v0": _plane_files("ops.npy"),
    "suite2p-v1": _plane_files("db.npy", "settings.npy", "reg_outputs.npy"),
    "traces-npy": ("dff.npy",),
    "traces-npz": ("dff.npz",),
    "traces-mat5": ("dff.mat",),
    "traces-mat73": ("dff73.mat",),
    "traces-h5": ("dff.h5",),
    "movie-tiff": ("movie.tif",),
    "caiman-npz": ("cnmf.npz",),
    "caiman-hdf5": ("cnmf.hdf5",),
    "nwb": ("rec.nwb",),
}


def _suite2p(root: Path, layout: str) -> Valid:
    sim = simulate(SimulationConfig(n_rois=N_ROIS, n_frames=N_FRAMES, fs=FS, seed=1))
    write_suite2p(sim, root / "suite2p", layout=layout)
    return Valid("suite2p", root / "suite2p", TARGETS[f"suite2p-{layout}"], root)


def _npy(root: Path, rng: np.random.Generator) -> Valid:
    np.save(root / "dff.npy", _traces(rng))
    return Valid("traces", root / "dff.npy", ("dff.npy",), root, {"fs": FS, "time_axis": 0})


def _npz(root: Path, rng: np.random.Generator) -> Valid:
    np.savez(root / "dff.npz", dff=_traces(rng), fs=np.array(FS))
    return Valid("traces", root / "dff.npz", ("dff.npz",), root, {"time_axis": 0})


def _mat5(root: Path, rng: np.random.Generator) -> Valid:
    scipy.io.savemat(root / "dff.mat", {"dff": _traces(rng), "fs": FS})
    return Valid("traces", root / "dff.mat", ("dff.mat",), root, {"time_axis": 0})


def _mat73(root: Path, rng: np.random.Generator) -> Valid:
    path = root / "dff73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("dff", data=_traces(rng).T)  # MATLAB writes column-major
        f["dff"].attrs["MATLAB_class"] = np.bytes_("single")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, written by cst-neuro tests".ljust(116))
    return Valid("traces", path, ("dff73.mat",), root, {"fs": FS, "time_axis": 0})


def _h5(root: Path, rng: np.random.Generator) -> Valid:
    with h5py.File(root / "dff.h5", "w") as f:
        f.create_dataset("dff", data=_traces(rng), chunks=(16, N_ROIS))
        f.attrs["fs"] = FS
    return Valid("traces", root / "dff.h5", ("dff.h5",), root, {"time_axis": 0})


def _tiff(root: Path, rng: np.random.Generator) -> Valid:
    frames = rng.integers(0, 4000, (N_FRAMES, 16, 16)).astype(np.uint16)
    tifffile.imwrite(root / "movie.tif", frames, imagej=True, metadata={"axes": "TYX"})
    return Valid("movie", root / "movie.tif", ("movie.tif",), root, {"fs": FS})


def _caiman_npz(root: Path, rng: np.random.Generator) -> Valid:
    A = sp.random(64, N_ROIS, density=0.2, format="csc", random_state=1)
    C = rng.random((N_ROIS, N_FRAMES))
    np.savez(root / "cnmf.npz", A=np.array(A, dtype=object), C=C, dims=np.array([8, 8]))
    return Valid("caiman", root / "cnmf.npz", ("cnmf.npz",), root, {"fs": FS})


def _caiman_h5(root: Path, rng: np.random.Generator) -> Valid:
    A = sp.random(64, N_ROIS, density=0.2, format="csc", random_state=2)
    with h5py.File(root / "cnmf.hdf5", "w") as f:
        est = f.create_group("estimates")
        group = est.create_group("A")
        for key in ("data", "indices", "indptr"):
            group[key] = getattr(A, key)
        group["shape"] = np.array(A.shape)
        est["C"] = rng.random((N_ROIS, N_FRAMES))
        est["dims"] = np.array([8, 8])
        f["params/data/fr"] = FS
    return Valid("caiman", root / "cnmf.hdf5", ("cnmf.hdf5",), root)


def _pixel_mask(i: int) -> list[tuple[float, float, float]]:
    return [(i, i + 1, 1.0), (i + 1, i + 1, 0.5)]


def write_nwb(
    root: Path,
    rng: np.random.Generator,
    mask: Callable[[int], list[tuple[float, float, float]]] = _pixel_mask,
) -> Valid:
    """A ΔF/F series with one pixel mask per ROI (``mask(i)``: its (x, y, weight) rows)."""
    from datetime import UTC, datetime

    import pynwb
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel, RoiResponseSeries

    nwb = pynwb.NWBFile(
        session_description="reliability",
        identifier="cst-neuro-reliability",
        session_start_time=datetime(2024, 1, 1, tzinfo=UTC),
    )
    device = nwb.create_device(name="Microscope")
    channel = OpticalChannel(name="green", description="green", emission_lambda=510.0)
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=channel,
        imaging_rate=FS,
        description="plane",
        device=device,
        excitation_lambda=920.0,
        indicator="GCaMP6s",
        location="V1",
    )
    ophys = nwb.create_processing_module(name="ophys", description="processed")
    seg = ImageSegmentation()
    ophys.add(seg)
    table = seg.create_plane_segmentation(name="rois", description="rois", imaging_plane=plane)
    for i in range(N_ROIS):
        table.add_roi(pixel_mask=mask(i))
    region = table.create_roi_table_region(region=list(range(N_ROIS)), description="all")
    series = RoiResponseSeries(name="dff", data=_traces(rng), rois=region, unit="1", rate=FS)
    ophys.add(DfOverF(roi_response_series=series))
    with pynwb.NWBHDF5IO(str(root / "rec.nwb"), "w") as writer:
        writer.write(nwb)
    return Valid("nwb", root / "rec.nwb", ("rec.nwb",), root)


BUILDERS: dict[str, Callable[..., Valid]] = {
    "suite2p-v0": lambda root, rng: _suite2p(root, "v0"),
    "suite2p-v1": lambda root, rng: _suite2p(root, "v1"),
    "traces-npy": _npy,
    "traces-npz": _npz,
    "traces-mat5": _mat5,
    "traces-mat73": _mat73,
    "traces-h5": _h5,
    "movie-tiff": _tiff,
    "caiman-npz": _caiman_npz,
    "caiman-hdf5": _caiman_h5,
    "nwb": write_nwb,
}


def build_valid(kind: str, root: Path) -> Valid:
    """Write the genuine input ``kind`` under ``root`` (seeded, a few kB)."""
    root.mkdir(parents=True, exist_ok=True)
    return BUILDERS[kind](root, np.random.default_rng(zlib.crc32(kind.encode())))


def assert_clean_cli_error(code: int, out: str, err: str, *names: str) -> str:
    """Exit 2, one ``error:`` line naming each of ``names``, no traceback; the line."""
    assert "Traceback" not in out + err, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error: ")]
    assert code == 2, f"exit {code}: {err[-1000:]}"
    assert len(error_lines) == 1, lines
    for name in names:
        assert name in error_lines[0], f"{name!r} not in {error_lines[0]!r}"
    return error_lines[0]


def cli_env() -> dict[str, str]:
    """Environment of a CLI child process: this checkout first on the path, one thread."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli_command(*args: str) -> list[str]:
    """The argv that runs ``cst-neuro ARGS`` in a fresh interpreter."""
    return [sys.executable, "-m", "cst_neuro", *args]


def run_cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run the CLI in a child process (real exit code, real stderr)."""
    done = subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=cwd,
    )
    return done.returncode, done.stdout, done.stderr


def cst_config(path: Path, model: dict[str, int], **settings: Any) -> Path:
    """A tiny, fast ``fit --config`` TOML (a few CPU seconds) of ``model``, with overrides."""
    base = {
        "window": 16,
        "batch_size": 2,
        "steps_per_epoch": 2,
        "max_epochs": 3,
        "patience": 50,
        "n_collocation": 8,
        "seed": 0,
        "prior": "none",
        **settings,
    }
    lines = [f"{k} = {v!r}" for k, v in base.items()]
    lines += ["[model]", *(f"{k} = {v!r}" for k, v in model.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a .npy file."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def cli(*args: object) -> tuple[int, str, str]:
    """``cst-neuro ARGS`` in-process (typer's runner): exit code, stdout, stderr.

    An exception other than the CLI's own exit is re-raised: a crash shows its traceback.
    """
    from typer.testing import CliRunner

    from cst_neuro._cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr
