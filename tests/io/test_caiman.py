"""CaImAn reader: the real CNMF .npz, synthetic .npz and cnm.save() HDF5 files, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr

from cst_neuro.errors import InputError, UnsafePickleError
from cst_neuro.io.caiman import CaimanReader
from cst_neuro.io.safe_pickle import load_npz_object

READER = CaimanReader()
REAL = "footprints/caiman_demoSue2x_cnmf.npz"


def make_cnmf(
    rng: np.random.Generator, d1: int, d2: int, n_comp: int, n_frames: int
) -> tuple[sp.csc_matrix, np.ndarray]:
    """Footprints A (pixels × components, Fortran pixel order) and traces C."""
    A = sp.random(d1 * d2, n_comp, density=0.2, format="csc", random_state=rng)
    A.data[:] = rng.random(A.nnz) + 0.1
    return A, rng.standard_normal((n_comp, n_frames))


def save_npz(path: Path, **members: object) -> None:
    """What CaImAn's scripts do: np.savez with pickled objects (sparse A, dicts)."""
    arrays = {}
    for k, v in members.items():
        arrays[k] = np.array(v, dtype=object) if not isinstance(v, np.ndarray) else v
    np.savez(path, **arrays)


def save_cnmf_hdf5(path: Path, A: sp.csc_matrix, C: np.ndarray, dims: tuple, fr: float) -> None:
    """The layout of ``CNMF.save()`` (caiman.utils.utils.save_dict_to_hdf5)."""
    with h5py.File(path, "w") as f:
        est = f.create_group("estimates")
        for part in ("data", "indices", "indptr"):
            est[f"A/{part}"] = getattr(A, part)
        est["A/shape"] = np.array(A.shape)
        est["C"] = C
        est["dims"] = np.array(dims)
        est["idx_components"] = np.array([0, 2])
        est["b"] = "NoneType"
        f["params/data/fr"] = fr
        f["params/data/dims"] = np.array(dims)
        f["dview"] = "NoneType"


def dense_footprints(ds: xr.Dataset, d1: int, d2: int) -> np.ndarray:
    """Rebuild (roi, y, x) images from the flat pixel lists."""
    out = np.zeros((ds.sizes["roi"], d1, d2))
    roi, y, x = (ds[k].values for k in ("footprint_roi", "footprint_y", "footprint_x"))
    out[roi, y, x] = ds["footprint_weight"].values
    return out


# --- the real file -------------------------------------------------------------------------


def test_real_cnmf_npz(shared_data: Path) -> None:
    path = shared_data / REAL
    ds = READER.open(path)
    assert (ds.sizes["roi"], ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]) == (58, 3000, 170, 170)
    assert ds.attrs["fs"] == 30.0  # information['params']['final_frate']
    C = load_npz_object(path, "C_full")
    A = load_npz_object(path, "A_full", allow_sparse=True)
    np.testing.assert_array_equal(ds["F"].values, C.T.astype(np.float32))
    assert ds["F"].attrs["trace_kind"] == "caiman_C"
    images = np.stack([A[:, k].toarray().reshape(170, 170, order="F") for k in range(58)])
    np.testing.assert_allclose(dense_footprints(ds, 170, 170), images, rtol=1e-6)
    k = 5
    yy, xx = np.nonzero(images[k])
    w = images[k][yy, xx]
    assert ds["roi_y"].values[k] == pytest.approx((w * yy).sum() / w.sum())
    assert ds["roi_x"].values[k] == pytest.approx((w * xx).sum() / w.sum())


def test_real_file_is_claimed_by_caiman(shared_data: Path) -> None:
    assert READER.guess_can_open(shared_data / REAL)
    assert not READER.guess_can_open(shared_data / "toy" / "ie_spirals_500x100x2.npy")


# --- synthetic .npz ------------------------------------------------------------------------


def test_npz_with_dims_key_non_square(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 12, 7, 4, 30)
    save_npz(tmp_path / "r.npz", A=A, C=C, dims=np.array([12, 7]), fr=np.float64(15.0))
    ds = READER.open(tmp_path / "r.npz")
    assert (ds.sizes["y"], ds.sizes["x"]) == (12, 7) and ds.attrs["fs"] == 15.0
    expected = np.stack([A[:, k].toarray().reshape(12, 7, order="F") for k in range(4)])
    np.testing.assert_allclose(dense_footprints(ds, 12, 7), expected, rtol=1e-6)
    np.testing.assert_array_equal(ds["F"].values, C.T.astype(np.float32))


def test_npz_d1_d2_keys_and_dense_footprints(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 5, 9, 3, 20)
    save_npz(tmp_path / "r.npz", A=A.toarray(), C=C, d1=np.int64(5), d2=np.int64(9))
    ds = READER.open(tmp_path / "r.npz", fs=10.0)
    assert (ds.sizes["y"], ds.sizes["x"]) == (5, 9)
    assert ds["footprint_roi"].size == A.nnz


def test_dims_option_and_square_fallback(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 6, 6, 2, 10)
    save_npz(tmp_path / "sq.npz", A=A, C=C)
    assert READER.open(tmp_path / "sq.npz", fs=5.0).sizes["y"] == 6
    A, C = make_cnmf(rng, 4, 6, 2, 10)
    save_npz(tmp_path / "rect.npz", A=A, C=C)
    with pytest.raises(InputError, match=r"rect\.npz: 24 pixels per footprint; pass --dims"):
        READER.open(tmp_path / "rect.npz", fs=5.0)
    ds = READER.open(tmp_path / "rect.npz", fs=5.0, dims=(4, 6))
    assert (ds.sizes["y"], ds.sizes["x"]) == (4, 6)
    with pytest.raises(InputError, match="do not match 24 pixels"):
        READER.open(tmp_path / "rect.npz", fs=5.0, dims=(5, 5))


def test_dims_option_contradicting_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 4, 6, 2, 10)
    save_npz(tmp_path / "r.npz", A=A, C=C, dims=np.array([4, 6]))
    with pytest.raises(InputError, match=r"the file says dims \(4, 6\) but --dims says"):
        READER.open(tmp_path / "r.npz", fs=5.0, dims=(6, 4))


def test_rate_from_information_fr(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 4, 4, 2, 10)
    save_npz(tmp_path / "r.npz", A_full=A, C_full=C, information={"params": {"fr": 12}})
    assert READER.open(tmp_path / "r.npz").attrs["fs"] == 12.0


def test_missing_rate(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 4, 4, 2, 10)
    save_npz(tmp_path / "norate.npz", A=A, C=C)
    with pytest.raises(InputError, match=r"norate\.npz: no sampling rate in the file; pass --fs"):
        READER.open(tmp_path / "norate.npz")


def test_component_mismatch_and_empty(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 4, 4, 3, 10)
    save_npz(tmp_path / "bad.npz", A=A, C=C[:2])
    with pytest.raises(InputError, match=r"bad\.npz: A has 3 components but C has 2"):
        READER.open(tmp_path / "bad.npz", fs=1.0)
    save_npz(tmp_path / "empty.npz", A=sp.csc_matrix((16, 0)), C=np.zeros((0, 10)))
    with pytest.raises(InputError, match=r"empty\.npz: C has shape \(0, 10\): no components"):
        READER.open(tmp_path / "empty.npz", fs=1.0)
    save_npz(tmp_path / "noframes.npz", A=A, C=np.zeros((3, 0)))
    with pytest.raises(InputError, match=r"noframes\.npz: .*no frames"):
        READER.open(tmp_path / "noframes.npz", fs=1.0)


def test_npz_without_a_and_c(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", dff=np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"other\.npz: not a CaImAn result"):
        READER.open(tmp_path / "other.npz", fs=1.0)
    assert not READER.guess_can_open(tmp_path / "other.npz")


def test_malicious_pickle_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    _, C = make_cnmf(rng, 4, 4, 2, 10)
    save_npz(tmp_path / "evil.npz", A=[os.getcwd], C=C)  # a pickled callable, never called
    with pytest.raises(UnsafePickleError, match=r"evil\.npz.*refused to load"):
        READER.open(tmp_path / "evil.npz", fs=1.0)


def test_not_a_zip_or_hdf5(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("text")
    with pytest.raises(InputError, match=r"x\.npz: not a CaImAn \.npz or HDF5 file"):
        READER.open(tmp_path / "x.npz", fs=1.0)
    with pytest.raises(InputError, match=r"missing\.npz: no such file"):
        READER.open(tmp_path / "missing.npz", fs=1.0)


def test_truncated_npz(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 8, 8, 3, 50)
    save_npz(tmp_path / "t.npz", A=A, C=C)
    raw = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"t\.npz: not a readable \.npz archive"):
        READER.open(tmp_path / "t.npz", fs=1.0)


# --- CNMF.save() HDF5 ----------------------------------------------------------------------


def test_cnmf_hdf5(tmp_path: Path, rng: np.random.Generator) -> None:
    A, C = make_cnmf(rng, 9, 11, 3, 40)
    save_cnmf_hdf5(tmp_path / "cnm.hdf5", A, C, (9, 11), 20.0)
    assert READER.guess_can_open(tmp_path / "cnm.hdf5")
    ds = READER.open(tmp_path / "cnm.hdf5")
    assert isinstance(ds["F"].data, da.Array)
    np.testing.assert_array_equal(ds["F"].values, C.T.astype(np.float32))
    expected = np.stack([A[:, k].toarray().reshape(9, 11, order="F") for k in range(3)])
    np.testing.assert_allclose(dense_footprints(ds, 9, 11), expected, rtol=1e-6)
    assert ds.attrs["fs"] == 20.0
    assert list(ds["iscell"].values) == [True, False, True]


def test_cnmf_hdf5_without_estimates(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f["estimates/C"] = "NoneType"
        f["estimates/A"] = "NoneType"
    with pytest.raises(InputError, match=r"x\.hdf5: not a CaImAn result") as info:
        READER.open(tmp_path / "x.hdf5", fs=1.0)
    assert str(info.value).count("x.hdf5") == 1  # named once, not wrapped twice


@pytest.mark.parametrize(
    ("fr", "problem"),
    [
        (np.zeros(0), "the file's sampling rate is array\\(\\[\\], dtype=float64\\), not a number"),
        (np.array([20.0, 30.0]), "not a number of Hz"),
        (-20.0, "must be a positive number of Hz"),
        (1e9, "beyond any imaging frame rate"),
    ],
)
def test_cnmf_rate_is_checked(tmp_path: Path, rng: np.random.Generator, fr, problem) -> None:
    A, C = make_cnmf(rng, 9, 11, 3, 40)
    save_cnmf_hdf5(tmp_path / "cnm.hdf5", A, C, (9, 11), fr)
    with pytest.raises(InputError, match=rf"cnm\.hdf5: .*{problem}"):
        READER.open(tmp_path / "cnm.hdf5")
