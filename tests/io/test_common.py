"""Helpers every reader shares: sniffing, lazy HDF5 arrays, footprints, the MAT loader."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from cst_neuro.errors import InputError
from cst_neuro.io._common import H5Array, footprint_vars, sniff
from cst_neuro.io.mat5 import load_mat, mat_version
from cst_neuro.io.npy import read_npy_header


def test_sniff_knows_every_container(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(3))
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.zeros(3)
    scipy.io.savemat(tmp_path / "a.mat", {"x": np.zeros(3)})
    scipy.io.savemat(tmp_path / "v4.mat", {"x": np.zeros(3)}, format="4")
    (tmp_path / "a.txt").write_text("time,value\n")
    kinds = {p.name: sniff(p) for p in sorted(tmp_path.iterdir())}
    assert kinds == {"a.h5": "hdf5", "a.mat": "mat5", "a.npy": "npy", "a.npz": "npz",
                     "a.txt": None, "v4.mat": None}  # fmt: skip
    with pytest.raises(InputError, match=r"gone: no such file"):
        sniff(tmp_path / "gone")


def test_mat_headers() -> None:
    assert mat_version(b"MATLAB 7.3 MAT-file, Platform: GLNXA64") == "7.3"
    assert mat_version(b"MATLAB 5.0 MAT-file") == "5"
    assert mat_version(b"\x89HDF\r\n\x1a\n") is None


def test_one_safe_mat_loader(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "a.mat", {"x": np.arange(3.0)})
    assert load_mat(tmp_path / "a.mat", squeeze_me=True)["x"].tolist() == [0.0, 1.0, 2.0]
    data = bytearray((tmp_path / "a.mat").read_bytes())
    data[136:140] = (99).to_bytes(4, "little")  # an impossible element type: crash guard
    (tmp_path / "bad.mat").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.mat: not a readable MATLAB \.mat file"):
        load_mat(tmp_path / "bad.mat")


def test_one_npy_header_parser(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 3), ">f4"))
    with open(tmp_path / "a.npy", "rb") as fh:
        assert read_npy_header(fh, "a.npy") == ((2, 3), False, np.dtype(">f4"))
    (tmp_path / "b.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{garbage}      \n")
    with open(tmp_path / "b.npy", "rb") as fh, pytest.raises(InputError, match=r"b\.npy: not a"):
        read_npy_header(fh, "b.npy")


def test_h5array_pickles_by_path(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["x"] = np.arange(12.0).reshape(3, 4)
    arr = H5Array(tmp_path / "p.h5", "x")
    arr[0]
    clone = pickle.loads(pickle.dumps(arr))
    np.testing.assert_array_equal(clone[1:], np.arange(4.0, 12.0).reshape(2, 4))


def test_footprint_vars_centroids() -> None:
    roi = np.array([0, 0, 1, 1])
    y, x = np.array([0, 2, 5, 7]), np.array([1, 1, 3, 5])
    w = np.array([1.0, 3.0, 0.0, 0.0])  # ROI 1 has zero weights: plain mean
    fp, cen = footprint_vars(Path("f.nwb"), roi, y, x, w, 3)  # ROI 2 has no pixels: NaN
    np.testing.assert_allclose(cen["roi_y"][1], [1.5, 6.0, np.nan])
    np.testing.assert_allclose(cen["roi_x"][1], [1.0, 4.0, np.nan])
    assert fp["footprint_y"][1].dtype == np.int32 and fp["footprint_weight"][1].dtype == np.float32


@pytest.mark.parametrize(
    ("y", "w", "problem"),
    [
        ([0, 4e9], [1.0, 1.0], "coordinate 4000000000.0 of ROI 0 is not a pixel index"),
        ([0, -1], [1.0, 1.0], "coordinate -1 of ROI 0 is not a pixel index"),
        ([0, 1.5], [1.0, 1.0], "coordinate 1.5 of ROI 0"),
        ([0, 1], [np.nan, np.nan], "2 footprint weights are NaN, inf or beyond float32"),
        ([0, 1], [1.0, 1e39], "1 footprint weights are NaN, inf or beyond float32"),
    ],
)
def test_footprints_that_cannot_be_stored_faithfully_are_errors(y, w, problem) -> None:
    with pytest.raises(InputError, match=rf"f\.nwb: .*{re.escape(problem)}"):
        footprint_vars(Path("f.nwb"), [0, 0], np.asarray(y), [1, 1], np.asarray(w), 1)
