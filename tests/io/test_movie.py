"""Movie reader: the real TIFF movie, ImageJ rates, lazy/bounded reads, layouts, bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from cst_neuro.errors import InputError
from cst_neuro.io import npy
from cst_neuro.io.movie import MovieReader, ZarrFrames

READER = MovieReader()
REAL = "movies/optinist_mouse2p_200frames.tiff"


@pytest.fixture
def frames(rng: np.random.Generator) -> np.ndarray:
    """A small uint16 movie: 12 frames of 16 × 10 pixels."""
    return rng.integers(0, 4000, size=(12, 16, 10), dtype=np.uint16)


# --- the real movie ------------------------------------------------------------------------


def test_real_movie_has_no_rate_in_its_metadata(shared_data: Path) -> None:
    with pytest.raises(InputError, match=r"optinist.*no sampling rate in the file; pass --fs HZ"):
        READER.open(shared_data / REAL)


def test_real_movie_reads_lazily_with_positioned_reads(
    shared_data: Path, numeric_reads: list[tuple[int, int]]
) -> None:
    path = shared_data / REAL
    reads = numeric_reads
    ds = READER.open(path, fs=30.0)
    assert not reads  # opening reads no frames
    assert (ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]) == (200, 128, 128)
    assert ds["grid"].dtype == np.float32 and isinstance(ds["grid"].data, da.Array)
    ref = tifffile.imread(path)
    np.testing.assert_array_equal(ds["grid"].values, ref.astype(np.float32))
    assert reads  # big-endian uint16 read through NumericFile at the series offset
    np.testing.assert_allclose(ds["mean_image"].values, ref.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(ds["y"].values, np.arange(128.0))
    assert ds.attrs["fs"] == 30.0 and ds["time"].values[-1] == pytest.approx(199 / 30)
    assert bool(ds["valid"].all())


def test_guess_can_open(shared_data: Path, tmp_path: Path) -> None:
    assert READER.guess_can_open(shared_data / REAL)
    (tmp_path / "fake.tif").write_text("not a tiff")
    assert not READER.guess_can_open(tmp_path / "fake.tif")
    assert not READER.guess_can_open(tmp_path / "missing.tif")
    assert not READER.guess_can_open(shared_data / "traces")


# --- rates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "fs"),
    [
        ({"axes": "TYX", "finterval": 0.05}, 20.0),
        ({"axes": "TYX", "finterval": 25.0, "tunit": "ms"}, 40.0),
        ({"axes": "TYX", "fps": 7.5}, 7.5),
    ],
)
def test_rate_from_imagej_metadata(
    tmp_path: Path, frames: np.ndarray, metadata: dict, fs: float
) -> None:
    tifffile.imwrite(tmp_path / "ij.tif", frames, imagej=True, metadata=metadata)
    ds = READER.open(tmp_path / "ij.tif")
    assert ds.attrs["fs"] == pytest.approx(fs)
    assert READER.open(tmp_path / "ij.tif", fs=3.0).attrs["fs"] == 3.0


def test_unknown_time_unit_is_an_error(tmp_path: Path, frames: np.ndarray) -> None:
    meta = {"axes": "TYX", "finterval": 2.0, "tunit": "fortnight"}
    tifffile.imwrite(tmp_path / "u.tif", frames, imagej=True, metadata=meta)
    with pytest.raises(InputError, match=r"u\.tif: unknown ImageJ time unit"):
        READER.open(tmp_path / "u.tif")


# --- layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"byteorder": ">"}, {"compression": "zlib"}, {"tile": (16, 16)}, {"bigtiff": True}],
)
def test_layouts_round_trip(tmp_path: Path, frames: np.ndarray, kwargs: dict) -> None:
    tifffile.imwrite(tmp_path / "m.tif", frames, **kwargs)
    ds = READER.open(tmp_path / "m.tif", fs=10.0)
    np.testing.assert_array_equal(ds["grid"].values, frames.astype(np.float32))
    np.testing.assert_allclose(ds["mean_image"].values, frames.mean(axis=0), rtol=1e-6)


def test_frames_written_one_call_at_a_time(tmp_path: Path, frames: np.ndarray) -> None:
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for frame in frames:
            tif.write(frame)
    ds = READER.open(tmp_path / "pages.tif", fs=10.0)
    np.testing.assert_array_equal(ds["grid"].values, frames.astype(np.float32))


def test_singleton_channel_axis_is_dropped(tmp_path: Path, frames: np.ndarray) -> None:
    tifffile.imwrite(
        tmp_path / "c1.tif", frames[:, None], imagej=True, metadata={"axes": "TCYX", "fps": 5.0}
    )
    ds = READER.open(tmp_path / "c1.tif")
    np.testing.assert_array_equal(ds["grid"].values, frames.astype(np.float32))


def test_reads_are_bounded_by_chunks(
    tmp_path: Path,
    frames: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    numeric_reads: list[tuple[int, int]],
) -> None:
    tifffile.imwrite(tmp_path / "m.tif", frames)
    monkeypatch.setattr(npy, "CHUNK_BYTES", 16 * 10 * 2 * 3)  # 3 frames per chunk
    ds = READER.open(tmp_path / "m.tif", fs=10.0)
    assert ds["grid"].data.numblocks[0] == 4
    reads = numeric_reads
    np.testing.assert_array_equal(ds["grid"][7].values, frames[7].astype(np.float32))
    assert reads == [(6, 9)]


def test_float_movie_keeps_nan_and_turns_inf_into_nan(tmp_path: Path) -> None:
    data = np.ones((5, 4, 4), dtype=np.float32)
    data[1, 2, 2], data[3, 0, 0] = np.nan, np.inf
    data[:, 1, 1] = np.nan  # a pixel with no finite sample
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="minisblack")
    ds = READER.open(tmp_path / "f.tif", fs=1.0)
    assert np.isnan(ds["grid"].values[3, 0, 0]) and np.isnan(ds["grid"].values[1, 2, 2])
    # the never-finite pixel is ignored; frames 1 and 3 have a missing sample
    np.testing.assert_array_equal(ds["valid"].values, [True, False, True, False, True])
    mean = ds["mean_image"].values
    assert np.isnan(mean[1, 1]) and mean[0, 0] == 1.0 and mean[2, 2] == 1.0


def test_zarr_frames_pickle_by_path(tmp_path: Path, frames: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "z.tif", frames, compression="zlib")
    zf = ZarrFrames(tmp_path / "z.tif", {}, frames.shape, frames.dtype)
    zf[0]
    clone = pickle.loads(pickle.dumps(zf))
    np.testing.assert_array_equal(clone[2:4], frames[2:4])


# --- bad input -----------------------------------------------------------------------------


def test_single_image_is_not_a_movie(tmp_path: Path, frames: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "one.tif", frames[0])
    with pytest.raises(InputError, match=r"one\.tif: a single 16×10 image, not a movie"):
        READER.open(tmp_path / "one.tif", fs=1.0)


def test_multichannel_stack_is_refused(tmp_path: Path, frames: np.ndarray) -> None:
    stack = np.stack([frames, frames], axis=1)  # (T, C, Y, X)
    tifffile.imwrite(tmp_path / "two.tif", stack, imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(InputError, match=r"two\.tif: a stack with axes 'TCYX'.*channels=2"):
        READER.open(tmp_path / "two.tif", fs=1.0)


def test_rgb_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 255, size=(4, 8, 8, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(InputError, match=r"rgb\.tif: .*colour samples"):
        READER.open(tmp_path / "rgb.tif", fs=1.0)


def test_truncated_tiff(tmp_path: Path, frames: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "t.tif", frames, imagej=True, metadata={"axes": "TYX"})
    raw = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"t\.tif: "):
        READER.open(tmp_path / "t.tif", fs=1.0).grid.values  # noqa: B018


def test_not_a_tiff(tmp_path: Path) -> None:
    (tmp_path / "x.tif").write_text("hello, I am text")
    with pytest.raises(InputError, match=r"x\.tif: not a readable TIFF file"):
        READER.open(tmp_path / "x.tif", fs=1.0)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gone\.tif: no such file"):
        READER.open(tmp_path / "gone.tif", fs=1.0)


def test_bad_fs(tmp_path: Path, frames: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "m.tif", frames)
    with pytest.raises(InputError, match=r"m\.tif: --fs must be a positive number"):
        READER.open(tmp_path / "m.tif", fs=0.0)
