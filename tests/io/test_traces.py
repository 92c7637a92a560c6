"""Traces reader: real CASCADE .mat files, every container format, orientation, bad input."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cst_neuro.errors import InputError
from cst_neuro.io import npy
from cst_neuro.io.traces import TracesReader

READER = TracesReader()
ALLEN = "traces/allen_vc2p_552195520_excerpt_30Hz.mat"
ZEBRAFISH = "traces/zebrafish_pDp_ogb1_7.5Hz_01.mat"


def write_mat73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 after a 512-byte text header, column-major.

    MATLAB stores an m × n array column-major, which HDF5 (row-major) records as n × m.
    """
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in arrays.items():
            value = np.atleast_2d(value)
            ds = f.create_dataset(name, data=value.T)
            matlab_class = "double" if value.dtype == np.float64 else "single"
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def expected(data: np.ndarray, time_axis: int) -> np.ndarray:
    """What the reader should return: (time, roi) float32 with inf as NaN."""
    out = np.asarray(data, dtype=np.float32)
    out = out.reshape(-1, 1) if out.ndim == 1 else (out.T if time_axis == 1 else out)
    return np.where(np.isinf(out), np.float32(np.nan), out)


# --- real recordings -----------------------------------------------------------------------


def test_allen_mat_is_roi_by_time_at_given_rate(shared_data: Path) -> None:
    path = shared_data / ALLEN
    ds = READER.open(path, fs=30.0)
    raw = scipy.io.loadmat(path)["dF_traces"]
    assert ds.sizes["time"] == 6001 and ds.sizes["roi"] == 74
    assert ds["F"].dtype == np.float32 and ds["F"].attrs["trace_kind"] == "unknown"
    np.testing.assert_array_equal(ds["F"].values, raw.T)
    np.testing.assert_allclose(ds["time"].values[:3], [0, 1 / 30, 2 / 30])
    assert ds.attrs["fs"] == 30.0 and ds.attrs["source_key"] == "dF_traces"
    assert bool(ds["valid"].all())


def test_allen_mat_without_rate_asks_for_fs(shared_data: Path) -> None:
    with pytest.raises(InputError, match=r"allen_vc2p.*no sampling rate in the file; pass --fs"):
        READER.open(shared_data / ALLEN)


def test_zebrafish_nans_stay_nan_and_mark_frames_invalid(shared_data: Path) -> None:
    path = shared_data / ZEBRAFISH
    ds = READER.open(path, fs=7.5)
    raw = scipy.io.loadmat(path)["dF_traces"]
    assert (ds.sizes["time"], ds.sizes["roi"]) == (260, 1005)
    F = ds["F"].values
    np.testing.assert_array_equal(np.isnan(F), np.isnan(raw.T))
    assert np.isnan(F).sum() == 520  # two ROIs are NaN throughout, never zero-filled
    assert ds["valid"].values.all()  # ...and being dead, they do not invalidate every frame
    np.testing.assert_allclose(F, raw.T.astype(np.float32))


def test_guess_can_open_real_files(shared_data: Path) -> None:
    assert READER.guess_can_open(shared_data / ALLEN)
    assert READER.guess_can_open(shared_data / "toy" / "ie_spirals_500x100x2.npy")
    assert not READER.guess_can_open(shared_data / "footprints" / "caiman_demoSue2x_cnmf.npz")
    assert not READER.guess_can_open(shared_data / "movies" / "optinist_mouse2p_200frames.tiff")


# --- formats -------------------------------------------------------------------------------


def test_npy_is_lazy_and_reads_only_requested_rows(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    numeric_reads: list[tuple[int, int]],
) -> None:
    data = rng.standard_normal((400, 7)).astype(np.float32)
    np.save(tmp_path / "dff.npy", data)
    monkeypatch.setattr(npy, "CHUNK_BYTES", 7 * 4 * 50)  # 50 frames per chunk
    ds = READER.open(tmp_path / "dff.npy", fs=10.0, time_axis=0)
    assert isinstance(ds["F"].data, da.Array) and ds["F"].data.numblocks == (8, 1)
    numeric_reads.clear()  # count only the reads of the slice below
    np.testing.assert_array_equal(ds["F"][120:130].values, data[120:130])
    assert numeric_reads and all(stop - start <= 50 for start, stop in numeric_reads)


def test_npy_roi_by_time_and_fortran_order(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((5, 60))
    np.save(tmp_path / "c.npy", data)
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    for name in ("c.npy", "f.npy"):
        ds = READER.open(tmp_path / name, fs=20.0, time_axis=1)
        np.testing.assert_array_equal(ds["F"].values, data.T.astype(np.float32))


def test_one_dimensional_and_vector_arrays_are_one_roi(tmp_path: Path) -> None:
    trace = np.arange(30, dtype=np.float32)
    np.save(tmp_path / "one.npy", trace)
    np.save(tmp_path / "row.npy", trace[None, :])
    for name in ("one.npy", "row.npy"):
        ds = READER.open(tmp_path / name, fs=5.0)
        assert (ds.sizes["time"], ds.sizes["roi"]) == (30, 1)
        np.testing.assert_array_equal(ds["F"].values[:, 0], trace)


def test_npz_orientation_and_rate_from_timestamps(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((4, 50)).astype(np.float32)
    t = 10.0 + np.arange(50) / 15.0
    np.savez(tmp_path / "rec.npz", dff=data, timestamps=t, roi_ids=np.arange(4))
    ds = READER.open(tmp_path / "rec.npz")
    np.testing.assert_array_equal(ds["F"].values, data.T)
    np.testing.assert_array_equal(ds["time"].values, t)
    assert ds.attrs["fs"] == pytest.approx(15.0)


def test_a_rate_that_contradicts_the_timestamps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The timestamps are the frames' times: a stored rate gives way to them (warned), and
    an --fs that contradicts them is an error, so a store never disagrees with itself."""
    data = np.zeros((20, 3), dtype=np.float32)
    np.savez(tmp_path / "r.npz", F=data, frame_rate=np.float64(12.5), t=np.arange(20) / 10.0)
    with caplog.at_level("WARNING", logger="cst_neuro.io._common"):
        ds = READER.open(tmp_path / "r.npz")
    assert ds.attrs["fs"] == pytest.approx(10.0)
    assert "sampling rate 12.5 Hz disagrees with its timestamps (10 Hz)" in caplog.text
    with pytest.raises(InputError, match=r"--fs 30 Hz contradicts the file's timestamps \(10 Hz"):
        READER.open(tmp_path / "r.npz", fs=30.0)
    assert READER.open(tmp_path / "r.npz", fs=10.02).attrs["fs"] == 10.02  # within 1 %


@pytest.mark.parametrize(
    ("rate", "problem"),
    [
        ("thirty", "the file's sampling rate is 'thirty', not a number of Hz"),
        (np.zeros(0), "not a number of Hz"),
        (np.array([10.0, 20.0]), "not a number of Hz"),
        (-30.0, "must be a positive number of Hz"),
        (1e12, "1e\\+12 Hz is beyond any imaging frame rate"),
    ],
)
def test_hdf5_rate_attributes_are_checked(tmp_path: Path, rate: object, problem: str) -> None:
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["dff"] = np.zeros((20, 3), np.float32)
        f["dff"].attrs["fs"] = rate
    with pytest.raises(InputError, match=rf"r\.h5: .*{problem}"):
        READER.open(tmp_path / "r.h5", time_axis=0)


def test_absurd_rate_options_are_refused_before_reading(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((20, 3), np.float32))
    for fs in (1e12, 1e308, float("inf")):
        with pytest.raises(InputError, match="--fs"):
            READER.open(tmp_path / "x.npy", fs=fs, time_axis=0)


def test_mat5_with_rate_and_cascade_orientation(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((6, 40))
    scipy.io.savemat(tmp_path / "cascade.mat", {"dF_traces": data, "fs": 7.5})
    ds = READER.open(tmp_path / "cascade.mat")
    np.testing.assert_array_equal(ds["F"].values, data.T.astype(np.float32))
    assert ds.attrs["fs"] == 7.5 and ds.attrs["source_version"] == "mat5"


def test_mat73_is_read_column_major(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((6, 40))  # MATLAB shape: 6 ROIs × 40 frames
    t = np.arange(40) / 30.0
    write_mat73(tmp_path / "v73.mat", {"dF_traces": data, "frame_times": t})
    assert READER.guess_can_open(tmp_path / "v73.mat")
    ds = READER.open(tmp_path / "v73.mat")
    assert ds.attrs["source_version"] == "mat73"
    assert isinstance(ds["F"].data, da.Array)
    np.testing.assert_array_equal(ds["F"].values, data.T.astype(np.float32))
    np.testing.assert_allclose(ds["time"].values, t)
    assert ds.attrs["fs"] == pytest.approx(30.0)


def test_mat73_time_by_roi_uses_timestamps_for_orientation(tmp_path: Path) -> None:
    data = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)  # MATLAB: 40 frames × 3 ROIs
    write_mat73(tmp_path / "tr.mat", {"traces": data, "t": np.arange(40) / 4.0})
    ds = READER.open(tmp_path / "tr.mat")
    np.testing.assert_array_equal(ds["F"].values, data)


def test_h5_nested_dataset_with_rate_attribute(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((100, 8)).astype(np.float32)
    with h5py.File(tmp_path / "rec.h5", "w") as f:
        f.attrs["fs"] = 20.0
        f.create_dataset("processed/dff", data=data, chunks=(10, 8))
        f["processed/roi_centres"] = rng.random((8, 2))
    ds = READER.open(tmp_path / "rec.h5", time_axis=0)
    assert isinstance(ds["F"].data, da.Array) and ds.attrs["source_key"] == "processed/dff"
    np.testing.assert_array_equal(ds["F"].values, data)
    assert ds.attrs["fs"] == 20.0


def test_h5_read_errors_after_open_are_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "lazy.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("dff", data=np.ones((2000, 50), dtype=np.float32))
    ds = READER.open(path, fs=10.0, time_axis=0)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(InputError, match=r"lazy\.h5: cannot read dataset"):
        ds["F"].values  # noqa: B018


def test_inf_becomes_nan_and_invalidates_the_frame(tmp_path: Path) -> None:
    data = np.ones((10, 3), dtype=np.float64)
    data[4, 1], data[7, 2] = np.inf, np.nan
    np.save(tmp_path / "x.npy", data)
    ds = READER.open(tmp_path / "x.npy", fs=1.0, time_axis=0)
    assert np.isnan(ds["F"].values[4, 1]) and np.isnan(ds["F"].values[7, 2])
    assert list(np.flatnonzero(~ds["valid"].values)) == [4, 7]


# --- choosing the array and the time axis ---------------------------------------------------


def test_preferred_name_wins_among_several_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", F=np.zeros((9, 2)), spikes=np.zeros((9, 2)))
    assert READER.open(tmp_path / "k.npz", fs=1.0, time_axis=0).attrs["source_key"] == "F"


def test_ambiguous_arrays_are_listed(tmp_path: Path) -> None:
    np.savez(tmp_path / "amb.npz", a=np.zeros((9, 2)), b=np.zeros((9, 3)))
    with pytest.raises(InputError, match=r"amb\.npz: several arrays.*a \(9, 2\).*--key"):
        READER.open(tmp_path / "amb.npz", fs=1.0)
    assert READER.open(tmp_path / "amb.npz", fs=1.0, key="b", time_axis=0).sizes["roi"] == 3


def test_key_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", a=np.zeros((9, 2)), label=np.array(["x"]))
    with pytest.raises(InputError, match=r"k\.npz: no array named 'zz' \(found: a, label\)"):
        READER.open(tmp_path / "k.npz", key="zz")
    with pytest.raises(InputError, match="'label' is not a 1-D or 2-D numeric array"):
        READER.open(tmp_path / "k.npz", key="label")
    np.save(tmp_path / "one.npy", np.zeros((9, 2)))
    with pytest.raises(InputError, match=r"one\.npy: a \.npy file holds one array"):
        READER.open(tmp_path / "one.npy", key="x")


def test_ambiguous_orientation_asks_for_time_axis(tmp_path: Path) -> None:
    np.save(tmp_path / "sq.npy", np.zeros((30, 40)))
    with pytest.raises(InputError, match=r"sq\.npy: cannot tell which axis is time for shape "):
        READER.open(tmp_path / "sq.npy", fs=1.0)
    with pytest.raises(InputError, match=r"--time-axis 0\|1"):
        READER.open(tmp_path / "sq.npy", fs=1.0)
    with pytest.raises(InputError, match="--time-axis must be 0 or 1"):
        READER.open(tmp_path / "sq.npy", fs=1.0, time_axis=2)


def test_square_data_with_timestamps_is_still_ambiguous(tmp_path: Path) -> None:
    np.savez(tmp_path / "sq.npz", dff=np.zeros((5, 5)), time=np.arange(5.0))
    with pytest.raises(InputError, match="cannot tell which axis is time"):
        READER.open(tmp_path / "sq.npz")
    assert READER.open(tmp_path / "sq.npz", time_axis=1).sizes["time"] == 5


# --- bad input -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gone\.npy: no such file"):
        READER.open(tmp_path / "gone.npy", fs=1.0)


def test_truncated_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.zeros((100, 10)))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"t\.npy: file is truncated"):
        READER.open(tmp_path / "t.npy", fs=1.0, time_axis=0)


def test_text_renamed_mat(tmp_path: Path) -> None:
    (tmp_path / "notes.mat").write_text("these are my notes, not a MATLAB file\n" * 20)
    with pytest.raises(InputError, match=r"notes\.mat: not a readable MATLAB \.mat file"):
        READER.open(tmp_path / "notes.mat", fs=1.0)
    assert not READER.guess_can_open(tmp_path / "notes.mat")


def test_truncated_mat(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "m.mat", {"dff": np.zeros((50, 4)), "fs": 3.0})
    raw = (tmp_path / "m.mat").read_bytes()
    (tmp_path / "m.mat").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(InputError, match=r"m\.mat: not a readable MATLAB"):
        READER.open(tmp_path / "m.mat", time_axis=0)


def test_npz_that_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 but not really a zip archive" * 3)
    with pytest.raises(InputError, match=r"fake\.npz: not a readable \.npz archive"):
        READER.open(tmp_path / "fake.npz", fs=1.0)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(InputError, match=r"text\.npz: not a .* file \(unrecognised header\)"):
        READER.open(tmp_path / "text.npz", fs=1.0)


def test_truncated_h5(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["dff"] = np.zeros((500, 20))
    raw = (tmp_path / "t.h5").read_bytes()
    (tmp_path / "t.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"t\.h5: not a readable HDF5 file"):
        READER.open(tmp_path / "t.h5", fs=1.0, time_axis=0)


@pytest.mark.parametrize(("shape", "axis"), [((0, 4), 0), ((4, 0), 0), ((0, 4), None)])
def test_zero_frames_or_rois(tmp_path: Path, shape: tuple[int, int], axis: int | None) -> None:
    np.save(tmp_path / "empty.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(InputError, match=r"empty\.npy: the array is empty .*no frames or no ROIs"):
        READER.open(tmp_path / "empty.npy", fs=1.0, time_axis=axis)


def test_missing_rate(tmp_path: Path) -> None:
    np.save(tmp_path / "norate.npy", np.zeros((10, 2)))
    message = r"norate\.npy: no sampling rate in the file; pass --fs HZ"
    with pytest.raises(InputError, match=message):
        READER.open(tmp_path / "norate.npy", time_axis=0)
    with pytest.raises(InputError, match="--fs must be a positive number"):
        READER.open(tmp_path / "norate.npy", time_axis=0, fs=-3.0)


@pytest.mark.parametrize(
    ("t", "message"),
    [
        (np.array([0.0, 0.1, 0.1, 0.3, 0.4]), "not strictly increasing"),
        (np.array([0.0, 0.1, 0.05, 0.3, 0.4]), "not strictly increasing"),
        (np.array([0.0, 0.1, np.nan, 0.3, 0.4]), "contain NaN or inf"),
        (np.arange(7.0), "timestamps have 7 samples"),
    ],
)
def test_bad_timestamps(tmp_path: Path, t: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "ts.npz", dff=np.zeros((5, 3)), timestamps=t)
    with pytest.raises(InputError, match=rf"ts\.npz: .*{message}"):
        READER.open(tmp_path / "ts.npz")


def test_guess_can_open_rejects_other_formats(tmp_path: Path) -> None:
    np.savez(tmp_path / "cnmf.npz", A=np.zeros((4, 2)), C=np.zeros((2, 9)))
    with h5py.File(tmp_path / "cnmf.hdf5", "w") as f:
        f["estimates/C"] = np.zeros((2, 9))
    with h5py.File(tmp_path / "rec.nwb", "w") as f:
        f.attrs["nwb_version"] = "2.8.0"
    with h5py.File(tmp_path / "nwb_like.h5", "w") as f:
        f.attrs["nwb_version"] = "2.8.0"
    (tmp_path / "fake.npy").write_text("not numpy")
    for name in ("cnmf.npz", "cnmf.hdf5", "rec.nwb", "nwb_like.h5", "fake.npy", "missing.npy"):
        assert not READER.guess_can_open(tmp_path / name), name
    np.savez(tmp_path / "dff.npz", dff=np.zeros((4, 2)))
    assert READER.guess_can_open(tmp_path / "dff.npz")


def test_reader_modules_import_heavy_libraries_lazily() -> None:
    modules = "traces, movie, caiman, nwb"
    heavy = ("pynwb", "hdmf", "h5py", "tifffile", "zarr", "scipy", "dask")
    code = (
        f"import sys; from cst_neuro.io import {modules}; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- property: exact round trips -------------------------------------------------------------


def _write(path: Path, fmt: str, data: np.ndarray) -> Path:
    if fmt == "npy":
        np.save(path.with_suffix(".npy"), data)
    elif fmt == "npz":
        np.savez_compressed(path.with_suffix(".npz"), traces=data)
    else:
        with h5py.File(path.with_suffix(".h5"), "w") as f:
            f.create_dataset("traces", data=data)
    return path.with_suffix(f".{fmt}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_frames=st.integers(1, 30),
    n_rois=st.integers(1, 6),
    time_axis=st.sampled_from([0, 1]),
    fmt=st.sampled_from(["npy", "npz", "h5"]),
    dtype=st.sampled_from([np.float32, np.float64, np.int16]),
    nan_fraction=st.sampled_from([0.0, 0.1, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_is_exact(
    n_frames: int,
    n_rois: int,
    time_axis: int,
    fmt: str,
    dtype: type,
    nan_fraction: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n_frames, n_rois)) * 100
    if np.dtype(dtype).kind == "f":
        values[rng.random(values.shape) < nan_fraction] = np.nan
    values = values.astype(dtype)
    stored = values.T if time_axis == 1 else values
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "rec", fmt, stored)
        key = None if fmt == "npy" else "traces"  # a 1 × 1 array alone reads as a scalar
        ds = READER.open(path, fs=10.0, time_axis=time_axis, key=key)
        F = ds["F"].values
        np.testing.assert_array_equal(F, values.astype(np.float32))
        finite = np.isfinite(F)
        expected = (finite | ~finite.any(axis=0)).all(axis=1)  # dead ROIs are ignored
        expected &= finite.any()  # but with no finite sample at all, nothing is valid
        np.testing.assert_array_equal(ds["valid"].values, expected)
        assert ds["time"].size == n_frames and ds["roi"].size == n_rois
