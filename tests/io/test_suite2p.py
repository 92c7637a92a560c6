"""Suite2p reader: real 0.x / 1.x folders, synthetic multi-plane and combined/, bad input."""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cst_neuro.errors import InputError, UnsafePickleError
from cst_neuro.io import base, open_recording
from cst_neuro.io.npy import NumericFile
from cst_neuro.io.safe_pickle import load_npy_object
from cst_neuro.io.suite2p import Suite2pReader

READER = Suite2pReader()
V0 = "suite2p/v0_fissa_rochefort/plane0"
V1 = "suite2p/v1_optinist_mouse2p"


# --- synthetic Suite2p folders -----------------------------------------------------------------


def save_pickle(path: Path, value: object) -> None:
    """What Suite2p does: np.save of a dict or an object array (pickled)."""
    np.save(path, np.array(value, dtype=object), allow_pickle=True)


def make_stat(n_rois: int, shape: tuple[int, int], rng: np.random.Generator) -> list[dict]:
    """ROIs of 2-6 pixels each, inside the (Ly, Lx) image."""
    stat = []
    for _ in range(n_rois):
        npix = int(rng.integers(2, 7))
        ypix = rng.integers(0, shape[0], npix)
        xpix = rng.integers(0, shape[1], npix)
        lam = rng.random(npix).astype(np.float32) + 0.1
        med = [int(np.median(ypix)), int(np.median(xpix))]
        stat.append({"ypix": ypix, "xpix": xpix, "lam": lam, "med": med, "npix": npix})
    return stat


def write_plane(
    folder: Path,
    F: np.ndarray,
    *,
    rng: np.random.Generator,
    layout: str = "0.x",
    fs: float | None = 10.0,
    iscell: np.ndarray | None = None,
    shape: tuple[int, int] = (24, 20),
    nplanes: int = 1,
    iplane: int = 0,
    stat: list[dict] | None = None,
) -> dict:
    """A Suite2p plane folder (0.x flat ops.npy, or 1.x db/settings/reg_outputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_rois, n_frames = F.shape
    np.save(folder / "F.npy", F.astype(np.float32))
    np.save(folder / "Fneu.npy", (0.5 * F).astype(np.float32))
    np.save(folder / "spks.npy", (2.0 * F).astype(np.float32))
    if iscell is None:
        iscell = np.ones(n_rois, dtype=bool)
    probs = np.linspace(0.1, 0.9, n_rois)
    np.save(folder / "iscell.npy", np.stack([iscell.astype(float), probs], axis=1))
    stat = make_stat(n_rois, shape, rng) if stat is None else stat
    save_pickle(folder / "stat.npy", stat)
    mean = rng.random(shape).astype(np.float32)
    common = {"nplanes": nplanes, "Ly": shape[0], "Lx": shape[1], "nframes": n_frames}
    if layout == "0.x":
        ops = {**common, "neucoeff": 0.7, "meanImg": mean, "reg_file": "/elsewhere/data.bin"}
        save_pickle(folder / "ops.npy", ops if fs is None else {**ops, "fs": fs})
    else:
        save_pickle(folder / "db.npy", {**common, "iplane": iplane})
        settings_ = {"version": "1.1.0", "extraction": {"neuropil_coefficient": 0.8}}
        save_pickle(folder / "settings.npy", settings_ if fs is None else {**settings_, "fs": fs})
        save_pickle(folder / "reg_outputs.npy", {"meanImg": mean, "badframes": np.zeros(n_frames)})
    return {"F": F, "stat": stat, "iscell": iscell, "probs": probs, "mean": mean}


def write_combined(
    parent: Path, planes: list[dict], *, fs: float = 10.0, layout: str = "0.x"
) -> Path:
    """``combined/`` as Suite2p writes it: planes tiled side by side, short ones zero-padded."""
    folder = parent / "combined"
    folder.mkdir(parents=True)
    n_frames = max(p["F"].shape[1] for p in planes)
    F, stat, iscell, dx = [], [], [], 0
    for k, p in enumerate(planes):
        pad = np.zeros((p["F"].shape[0], n_frames - p["F"].shape[1]), np.float32)
        F.append(np.concatenate([p["F"].astype(np.float32), pad], axis=1))
        for roi in p["stat"]:
            med = [roi["med"][0], roi["med"][1] + dx]
            stat.append({**roi, "xpix": roi["xpix"] + dx, "med": med, "iplane": k})
        iscell.append(np.stack([p["iscell"].astype(float), p["probs"]], axis=1))
        dx += p["mean"].shape[1]
    F = np.concatenate(F)
    np.save(folder / "F.npy", F)
    np.save(folder / "Fneu.npy", 0.5 * F)
    np.save(folder / "spks.npy", 2.0 * F)
    np.save(folder / "iscell.npy", np.concatenate(iscell))
    save_pickle(folder / "stat.npy", stat)
    mosaic = np.concatenate([p["mean"] for p in planes], axis=1)
    Ly, Lx = mosaic.shape
    if layout == "0.x":
        ops = {"fs": fs, "nplanes": len(planes), "Ly": Ly, "Lx": Lx, "neucoeff": 0.7}
        save_pickle(folder / "ops.npy", {**ops, "meanImg": mosaic})
    else:  # 1.x: the last plane's db with the mosaic's size and mean image, and settings
        db = {"nplanes": len(planes), "iplane": len(planes) - 1, "Ly": Ly, "Lx": Lx}
        save_pickle(folder / "db.npy", {**db, "meanImg": mosaic, "nframes": 1})
        settings_ = {"fs": fs, "version": "1.1.0", "extraction": {"neuropil_coefficient": 0.8}}
        save_pickle(folder / "settings.npy", settings_)
    return folder


def traces(rng: np.random.Generator, n_rois: int, n_frames: int) -> np.ndarray:
    """Fluorescence-like values, never exactly 0 (so padding detection is exact)."""
    return (100 + 10 * rng.random((n_rois, n_frames))).astype(np.float32)


# --- real folders ------------------------------------------------------------------------------


def test_real_v0_folder(shared_data: Path) -> None:
    folder = shared_data / V0
    ds = READER.open(folder)
    F = np.load(folder / "F.npy")
    iscell = np.load(folder / "iscell.npy")
    cells = np.flatnonzero(iscell[:, 0] == 1)
    assert ds.sizes["time"] == 864 and ds.sizes["roi"] == cells.size == 21
    assert ds.attrs["fs"] == 1.0 and ds.attrs["neuropil_coefficient"] == 0.7
    assert ds.attrs["source_version"] == "0.x" and ds.attrs["nplanes"] == 1
    assert ds.attrs["source_name"] == "v0_fissa_rochefort/plane0"
    for name in ("F", "Fneu", "spks"):
        assert ds[name].dims == ("time", "roi") and ds[name].dtype == np.float32
        assert isinstance(ds[name].data, da.Array)
    np.testing.assert_array_equal(ds["roi"], cells)
    np.testing.assert_array_equal(ds["F"].values, F[cells].T)
    np.testing.assert_array_equal(ds["cell_prob"], iscell[cells, 1].astype(np.float32))
    assert ds["iscell"].dtype == bool and ds["iscell"].all()
    np.testing.assert_allclose(ds["time"], np.arange(864) / 1.0)
    ops = load_npy_object(folder / "ops.npy")
    assert ds["mean_image"].shape == (176, 156)
    np.testing.assert_allclose(ds["mean_image"], ops["meanImg"], rtol=1e-6)
    assert bool(ds["valid"].all())


def test_real_v1_parent_folder(shared_data: Path) -> None:
    folder = shared_data / V1
    ds = READER.open(folder)
    iscell = np.load(folder / "plane0" / "iscell.npy")
    cells = np.flatnonzero(iscell[:, 0] == 1)
    assert ds.sizes["time"] == 2000 and ds.sizes["roi"] == cells.size == 54
    assert ds.attrs["fs"] == 30.0 and ds.attrs["neuropil_coefficient"] == 0.7
    assert ds.attrs["source_version"] == "1.1.0" and ds.attrs["source_name"] == folder.name
    np.testing.assert_allclose(ds["time"][:3], [0, 1 / 30, 2 / 30])
    F = np.load(folder / "plane0" / "F.npy")
    np.testing.assert_array_equal(ds["F"].values, F[cells].T)
    np.testing.assert_array_equal(ds["Fneu"].values, np.load(folder / "plane0/Fneu.npy")[cells].T)
    reg = load_npy_object(folder / "plane0" / "reg_outputs.npy")
    np.testing.assert_array_equal(ds["mean_image"], reg["meanImg"])
    assert (ds["roi_time_offset"] == 0).all() and (ds["roi_plane"] == 0).all()
    plane = READER.open(folder / "plane0")
    np.testing.assert_array_equal(plane["F"].values, ds["F"].values)
    np.testing.assert_array_equal(plane["roi"], ds["roi"])


def test_real_v1_all_rois(shared_data: Path) -> None:
    folder = shared_data / V1 / "plane0"
    ds = READER.open(folder, all_rois=True)
    iscell = np.load(folder / "iscell.npy")
    assert ds.sizes["roi"] == 306
    np.testing.assert_array_equal(ds["roi"], np.arange(306))
    np.testing.assert_array_equal(ds["iscell"], iscell[:, 0] == 1)
    np.testing.assert_array_equal(ds["spks"].values, np.load(folder / "spks.npy").T)


@pytest.mark.parametrize("name", [V0, V1 + "/plane0"])
def test_real_footprints_match_stat(shared_data: Path, name: str) -> None:
    folder = shared_data / name
    ds = READER.open(folder)
    stat = load_npy_object(folder / "stat.npy")
    for position, roi in enumerate(ds["roi"].values):
        entry = stat[roi]
        pix = ds["footprint_roi"].values == position
        np.testing.assert_array_equal(ds["footprint_y"].values[pix], entry["ypix"])
        np.testing.assert_array_equal(ds["footprint_x"].values[pix], entry["xpix"])
        np.testing.assert_allclose(ds["footprint_weight"].values[pix], entry["lam"])
        assert (ds["roi_y"][position], ds["roi_x"][position]) == tuple(entry["med"])


# --- one plane: layouts, options, movie, NaN ------------------------------------------------


def test_1x_plane_layout(tmp_path: Path, rng: np.random.Generator) -> None:
    truth = write_plane(
        tmp_path / "plane2", traces(rng, 5, 30), rng=rng, layout="1.x", fs=7.5, nplanes=4, iplane=2
    )
    ds = READER.open(tmp_path / "plane2")
    assert ds.attrs["fs"] == 7.5 and ds.attrs["source_version"] == "1.1.0"
    assert ds.attrs["neuropil_coefficient"] == 0.8 and ds.attrs["nplanes"] == 4
    assert (ds["roi_plane"] == 2).all()
    np.testing.assert_allclose(ds["roi_time_offset"], 2 / (7.5 * 4))
    np.testing.assert_array_equal(ds["mean_image"], truth["mean"])
    np.testing.assert_array_equal(ds["y"], np.arange(24))


def test_badframes_mark_frames_invalid(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "plane0"
    write_plane(folder, traces(rng, 4, 30), rng=rng, layout="1.x")
    bad = np.zeros(30)
    bad[[3, 17]] = 1
    save_pickle(folder / "reg_outputs.npy", {"badframes": bad})
    ds = READER.open(folder)
    assert ds.attrs["n_bad_frames"] == 2
    np.testing.assert_array_equal(np.flatnonzero(~ds["valid"].values), [3, 17])
    assert np.isfinite(ds["F"].values[[3, 17]]).all()  # data kept, only flagged


def test_overrides(tmp_path: Path, rng: np.random.Generator) -> None:
    write_plane(tmp_path, traces(rng, 3, 20), rng=rng, fs=None)
    ds = READER.open(tmp_path, fs=12.5, neuropil=0.5)
    assert ds.attrs["fs"] == 12.5 and ds.attrs["neuropil_coefficient"] == 0.5
    np.testing.assert_allclose(ds["time"], np.arange(20) / 12.5)
    assert READER.option_names() == {"fs", "neuropil", "all_rois"}


@pytest.mark.parametrize(
    "options",
    [
        {"fs": 0.0},
        {"fs": -3},
        {"fs": float("nan")},
        {"fs": float("inf")},
        {"neuropil": float("nan")},
        {"neuropil": -0.1},
    ],
)
def test_bad_overrides(tmp_path: Path, rng: np.random.Generator, options: dict) -> None:
    write_plane(tmp_path, traces(rng, 3, 20), rng=rng)
    with pytest.raises(InputError, match="must be"):
        READER.open(tmp_path, **options)


def test_no_sampling_rate(tmp_path: Path, rng: np.random.Generator) -> None:
    write_plane(tmp_path, traces(rng, 3, 20), rng=rng, fs=None)
    with pytest.raises(InputError, match=r"no sampling rate in ops\.npy; pass --fs HZ"):
        READER.open(tmp_path)


def test_sampling_rate_in_file_must_be_positive(tmp_path: Path, rng: np.random.Generator) -> None:
    write_plane(tmp_path, traces(rng, 3, 20), rng=rng, fs=0.0)
    with pytest.raises(InputError, match=r"ops\.npy.*--fs"):
        READER.open(tmp_path)
    assert READER.open(tmp_path, fs=4.0).attrs["fs"] == 4.0


def test_movie_is_lazy_and_matches(tmp_path: Path, rng: np.random.Generator) -> None:
    write_plane(tmp_path, traces(rng, 3, 16), rng=rng, shape=(8, 6))
    movie = rng.integers(-1000, 1000, (16, 8, 6), dtype=np.int16)
    movie.tofile(tmp_path / "data.bin")
    ds = READER.open(tmp_path)
    assert ds["movie"].dims == ("time", "y", "x") and ds["movie"].dtype == np.int16
    assert isinstance(ds["movie"].data, da.Array)
    assert ds["movie"].data.chunks[1:] == ((8,), (6,))
    np.testing.assert_array_equal(ds["movie"].values, movie)


def test_movie_frame_count_must_match(tmp_path: Path, rng: np.random.Generator) -> None:
    write_plane(tmp_path, traces(rng, 3, 16), rng=rng, shape=(8, 6))
    np.zeros((15, 8, 6), np.int16).tofile(tmp_path / "data.bin")
    with pytest.raises(InputError, match=r"data\.bin.*15 frames but F\.npy has 16"):
        READER.open(tmp_path)


def test_nan_and_inf_become_nan(tmp_path: Path, rng: np.random.Generator) -> None:
    F = traces(rng, 4, 10)
    F[1, 3], F[2, 7], F[0, 9] = np.nan, np.inf, -np.inf
    write_plane(tmp_path, F, rng=rng)
    ds = READER.open(tmp_path)
    out = ds["F"].values.T
    assert np.isnan(out[1, 3]) and np.isnan(out[2, 7]) and np.isnan(out[0, 9])
    assert np.count_nonzero(np.isnan(out)) == 3
    np.testing.assert_array_equal(out[np.isfinite(F)], F[np.isfinite(F)])
    np.testing.assert_array_equal(ds["valid"].values, ~np.isin(np.arange(10), [3, 7, 9]))


def test_missing_iscell_keeps_all_with_warning(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    write_plane(tmp_path, traces(rng, 4, 10), rng=rng, iscell=np.array([1, 0, 0, 1], bool))
    (tmp_path / "iscell.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="cst_neuro.io.suite2p"):
        ds = READER.open(tmp_path)
    assert ds.sizes["roi"] == 4 and "iscell" not in ds and "cell_prob" not in ds
    assert "no iscell.npy" in caplog.text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.lists(st.booleans(), min_size=1, max_size=12).filter(any), seed=st.integers(0, 99))
def test_cell_selection_keeps_source_ids(bits: list[bool], seed: int) -> None:
    rng = np.random.default_rng(seed)
    iscell = np.array(bits)
    with tempfile.TemporaryDirectory() as tmp:
        truth = write_plane(Path(tmp), traces(rng, iscell.size, 9), rng=rng, iscell=iscell)
        ds = READER.open(tmp)
        cells = np.flatnonzero(iscell)
        np.testing.assert_array_equal(ds["roi"], cells)
        np.testing.assert_array_equal(ds["F"].values, truth["F"][cells].T)
        np.testing.assert_array_equal(ds["cell_prob"], truth["probs"][cells].astype(np.float32))
        npix = [truth["stat"][i]["npix"] for i in cells]
        np.testing.assert_array_equal(ds["footprint_roi"], np.repeat(np.arange(cells.size), npix))
        y = np.concatenate([truth["stat"][i]["ypix"] for i in cells])
        np.testing.assert_array_equal(ds["footprint_y"], y)
        assert READER.open(tmp, all_rois=True).sizes["roi"] == iscell.size


def test_opening_does_not_read_traces(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 ROIs x 100,000 frames (sparse 2 GB files): only headers, stat, ops, iscell."""
    n_rois, n_frames = 5000, 100_000
    for name in ("F", "Fneu", "spks"):
        arr = np.lib.format.open_memmap(
            tmp_path / f"{name}.npy", "w+", np.float32, (n_rois, n_frames)
        )
        del arr
    np.save(tmp_path / "iscell.npy", np.ones((n_rois, 2)))
    save_pickle(tmp_path / "stat.npy", make_stat(n_rois, (512, 512), rng))
    save_pickle(tmp_path / "ops.npy", {"fs": 30.0, "Ly": 512, "Lx": 512, "neucoeff": 0.7})
    real_read = NumericFile.read_rows

    def guarded(self: NumericFile, start: int, stop: int) -> np.ndarray:
        assert self.path.name == "iscell.npy", f"opening read {self.path.name}"
        return real_read(self, start, stop)

    monkeypatch.setattr(NumericFile, "read_rows", guarded)
    ds = READER.open(tmp_path)
    assert ds["F"].shape == (n_frames, n_rois)
    assert max(ds["F"].data.chunks[1]) <= 128 and ds["F"].data.chunks[0] == (n_frames,)
    monkeypatch.setattr(NumericFile, "read_rows", real_read)
    assert float(ds["F"][:5, :3].sum()) == 0.0  # reads one block of 128 ROIs


# --- several planes ------------------------------------------------------------------------


def write_planes(
    parent: Path, rng: np.random.Generator, frames: list[int], rois: list[int], **kwargs: object
) -> list[dict]:
    return [
        write_plane(
            parent / f"plane{k}",
            traces(rng, n, t),
            rng=rng,
            nplanes=len(frames),
            iplane=k,
            **kwargs,
        )
        for k, (t, n) in enumerate(zip(frames, rois, strict=True))
    ]


def test_multiplane_parent(tmp_path: Path, rng: np.random.Generator) -> None:
    planes = write_planes(tmp_path, rng, frames=[12, 10, 12], rois=[4, 3, 2], fs=5.0)
    np.zeros((12, 24, 20), np.int16).tofile(tmp_path / "plane0" / "data.bin")
    ds = READER.open(tmp_path)
    assert ds.sizes["time"] == 12 and ds.sizes["roi"] == 9
    np.testing.assert_allclose(ds["time"], np.arange(12) / 5.0)
    np.testing.assert_array_equal(ds["roi"], np.arange(9))
    np.testing.assert_array_equal(ds["roi_plane"], [0] * 4 + [1] * 3 + [2] * 2)
    assert ds["roi_plane"].dtype == np.int16
    np.testing.assert_allclose(ds["roi_time_offset"], ds["roi_plane"] / (5.0 * 3))
    F = ds["F"].values
    np.testing.assert_array_equal(F[:10, 4:7], planes[1]["F"].T)
    assert np.isnan(F[10:, 4:7]).all() and np.isnan(ds["spks"].values[10:, 4:7]).all()
    assert np.isfinite(np.delete(F, [4, 5, 6], axis=1)).all()
    np.testing.assert_array_equal(ds["valid"], np.arange(12) < 10)
    assert "movie" not in ds and ds.attrs["nplanes"] == 3
    assert ds["mean_image"].dims == ("plane", "y", "x")
    np.testing.assert_array_equal(ds["mean_image"][1], planes[1]["mean"])
    on_plane2 = ds["footprint_roi"].values >= 7  # footprints stay in each plane's pixel grid
    np.testing.assert_array_equal(
        ds["footprint_x"].values[on_plane2], np.concatenate([s["xpix"] for s in planes[2]["stat"]])
    )


def test_multiplane_cells_and_mixed_shapes(tmp_path: Path, rng: np.random.Generator) -> None:
    cells = [np.array([0, 1, 1], bool), np.array([1, 0], bool)]
    for k, (iscell, shape) in enumerate(zip(cells, [(24, 20), (16, 16)], strict=True)):
        write_plane(
            tmp_path / f"plane{k}",
            traces(rng, iscell.size, 8),
            rng=rng,
            nplanes=2,
            iscell=iscell,
            shape=shape,
        )
    ds = READER.open(tmp_path)
    np.testing.assert_array_equal(ds["roi"], [1, 2, 3])  # ids in plane order, as in combined/
    np.testing.assert_array_equal(ds["roi_plane"], [0, 0, 1])
    assert "mean_image" not in ds and "y" not in ds.coords


def test_multiplane_without_cells(tmp_path: Path, rng: np.random.Generator) -> None:
    for k in range(2):
        write_plane(
            tmp_path / f"plane{k}", traces(rng, 2, 8), rng=rng, nplanes=2, iscell=np.zeros(2, bool)
        )
    with pytest.raises(InputError, match="--all-rois"):
        READER.open(tmp_path)
    assert READER.open(tmp_path, all_rois=True).sizes["roi"] == 4


def test_single_plane_parent_keeps_movie(tmp_path: Path, rng: np.random.Generator) -> None:
    write_planes(tmp_path, rng, frames=[6], rois=[2])
    np.ones((6, 24, 20), np.int16).tofile(tmp_path / "plane0" / "data.bin")
    ds = READER.open(tmp_path)
    assert ds["movie"].shape == (6, 24, 20) and ds["mean_image"].dims == ("y", "x")


def test_plane_without_rois_is_skipped(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    write_planes(tmp_path, rng, frames=[6, 6], rois=[2, 3])
    (tmp_path / "plane2").mkdir()  # Suite2p 1.x leaves no F.npy/stat.npy when it finds nothing
    with caplog.at_level(logging.WARNING, logger="cst_neuro.io.suite2p"):
        ds = READER.open(tmp_path)
    assert ds.sizes["roi"] == 5 and "plane2" in caplog.text


def test_soft_metadata_problems_warn(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    write_plane(tmp_path / "plane3", traces(rng, 2, 6), rng=rng, nplanes=2)
    ops = load_npy_object(tmp_path / "plane3" / "ops.npy")
    del ops["neucoeff"]
    save_pickle(tmp_path / "plane3" / "ops.npy", ops)
    np.save(tmp_path / "plane3" / "iscell.npy", np.array([1.0, 1.0]))  # labels only
    with caplog.at_level(logging.WARNING, logger="cst_neuro.io.suite2p"):
        ds = READER.open(tmp_path / "plane3")
    assert ds.attrs["neuropil_coefficient"] == 0.7 and "default" in caplog.text
    assert ds.attrs["nplanes"] == 4 and "nplanes is 2" in caplog.text  # plane3 of "2" planes
    np.testing.assert_allclose(ds["roi_time_offset"], 3 / (10.0 * 4))
    assert "cell_prob" not in ds and ds["iscell"].all()


# --- combined/ -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["0.x", "1.x"])
def test_combined_with_sibling_planes(
    tmp_path: Path, rng: np.random.Generator, layout: str
) -> None:
    iscell = [np.array([1, 0, 1], bool), np.array([1, 1], bool), np.array([0, 1, 1, 1], bool)]
    planes = [
        write_plane(
            tmp_path / f"plane{k}",
            traces(rng, c.size, t),
            rng=rng,
            nplanes=3,
            iscell=c,
            layout=layout,
            iplane=k,
        )
        for k, (c, t) in enumerate(zip(iscell, [20, 17, 19], strict=True))
    ]
    combined = write_combined(tmp_path, planes, layout=layout)
    ds = READER.open(combined)
    parent = READER.open(tmp_path)
    assert ds.attrs == {**parent.attrs, "source_name": ds.attrs["source_name"]}
    assert ds.attrs["source_version"] == ("0.x" if layout == "0.x" else "1.1.0")
    for name in ("F", "Fneu", "spks"):
        np.testing.assert_array_equal(ds[name].values, parent[name].values)  # NaN where padded
    for name in ("roi", "roi_plane", "roi_time_offset", "iscell", "cell_prob", "footprint_roi"):
        np.testing.assert_array_equal(ds[name], parent[name])
    assert np.isnan(ds["F"].values[17:, ds["roi_plane"].values == 1]).all()
    np.testing.assert_array_equal(ds["valid"], np.arange(20) < 17)
    tile = np.array([0, 20, 40])[parent["roi_plane"].values]  # Suite2p's mosaic offsets
    np.testing.assert_array_equal(ds["roi_x"], parent["roi_x"] + tile)
    assert ds["mean_image"].shape == (24, 60)
    assert ds.attrs["source_name"].endswith("combined")
    assert READER.guess_can_open(combined)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(st.integers(3, 15), min_size=1, max_size=4),
    data=st.data(),
)
def test_combined_padding_detected_without_siblings(frames: list[int], data: st.DataObject) -> None:
    rois = data.draw(st.lists(st.integers(0, 3), min_size=len(frames), max_size=len(frames)))
    if sum(rois) == 0:
        rois[0] = 1
    rng = np.random.default_rng(sum(frames) * 7 + sum(rois))
    with tempfile.TemporaryDirectory() as tmp:
        planes = write_planes(Path(tmp) / "elsewhere", rng, frames, rois)
        combined = write_combined(Path(tmp), planes)  # no planeN/ next to this combined/
        ds = READER.open(combined)
        F, start = ds["F"].values, 0
        for k, plane in enumerate(planes):
            n, t = plane["F"].shape
            block = F[:, start : start + n]
            np.testing.assert_array_equal(block[:t], plane["F"].T)
            assert np.isnan(block[t:]).all()
            np.testing.assert_allclose(
                ds["roi_time_offset"][start : start + n], k / (10.0 * len(frames))
            )
            start += n


def test_parent_with_only_combined(tmp_path: Path, rng: np.random.Generator) -> None:
    planes = write_planes(tmp_path / "elsewhere", rng, [8, 6], [2, 3])
    write_combined(tmp_path / "suite2p", planes)
    assert READER.guess_can_open(tmp_path / "suite2p")
    ds = READER.open(tmp_path / "suite2p")
    assert ds.attrs["source_name"].endswith("suite2p/combined") and ds.sizes["roi"] == 5
    assert np.isnan(ds["F"].values[6:, 2:]).all() and np.isfinite(ds["F"].values[:, :2]).all()


def test_combined_needs_iplane(tmp_path: Path, rng: np.random.Generator) -> None:
    combined = write_combined(tmp_path, write_planes(tmp_path, rng, [8, 8], [2, 2]))
    stat = load_npy_object(combined / "stat.npy")
    del stat[3]["iplane"]
    save_pickle(combined / "stat.npy", list(stat))
    with pytest.raises(InputError, match=r"stat\.npy.*ROI 3 has no 'iplane'"):
        READER.open(combined)


# --- bad input -------------------------------------------------------------------------------


def _set_stat(key: str, value: object):
    def mutate(folder: Path) -> None:
        stat = list(load_npy_object(folder / "stat.npy"))
        stat[1] = (
            {**stat[1], key: value}
            if value is not None
            else {k: v for k, v in stat[1].items() if k != key}
        )
        save_pickle(folder / "stat.npy", stat)

    return mutate


def _truncate(name: str, keep: int):
    def mutate(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:keep])

    return mutate


def _save(name: str, value: object):
    return lambda folder: np.save(folder / name, value)


BAD_INPUT = {
    "F missing": (lambda f: (f / "F.npy").unlink(), "F.npy", "no such file"),
    "stat missing": (lambda f: (f / "stat.npy").unlink(), "stat.npy", "no such file"),
    "F truncated": (_truncate("F.npy", 200), "F.npy", "truncated"),
    "F not an npy": (lambda f: (f / "F.npy").write_bytes(b"hello"), "F.npy", "not a valid"),
    "F is 1-D": (_save("F.npy", np.ones(10, np.float32)), "F.npy", "2-D"),
    "F pickled": (lambda f: save_pickle(f / "F.npy", [{}]), "F.npy", "pickled"),
    "Fneu shape": (_save("Fneu.npy", np.ones((4, 9), np.float32)), "Fneu.npy", "does not match"),
    "spks shape": (_save("spks.npy", np.ones((3, 10), np.float32)), "spks.npy", "does not match"),
    "iscell length": (_save("iscell.npy", np.ones((3, 2))), "iscell.npy", "does not match"),
    "stat length": (
        lambda f: save_pickle(f / "stat.npy", make_stat(3, (24, 20), np.random.default_rng(0))),
        "stat.npy",
        "3 ROIs but F.npy has 4",
    ),
    "stat truncated": (_truncate("stat.npy", 200), "stat.npy", "corrupt or truncated"),
    "stat not a list": (lambda f: save_pickle(f / "stat.npy", {"a": 1}), "stat.npy", "list"),
    "no ypix": (_set_stat("ypix", None), "stat.npy", "ROI 1 has no 'ypix'"),
    "no xpix": (_set_stat("xpix", None), "stat.npy", "ROI 1 has no 'xpix'"),
    "no lam": (_set_stat("lam", None), "stat.npy", "ROI 1 has no 'lam'"),
    "no med": (_set_stat("med", None), "stat.npy", "ROI 1 has no 'med'"),
    "ypix outside": (_set_stat("ypix", np.array([3, 24])), "stat.npy", "outside the image"),
    "xpix negative": (_set_stat("xpix", np.array([-1, 2])), "stat.npy", "outside the image"),
    "ypix fractional": (_set_stat("ypix", np.array([1.5, 2])), "stat.npy", "integer pixel"),
    "lam length": (_set_stat("lam", np.ones(1)), "stat.npy", "differ in length"),
    "med malformed": (_set_stat("med", [1.0]), "stat.npy", "expected [y, x]"),
    "ops not a dict": (lambda f: save_pickle(f / "ops.npy", [1, 2]), "ops.npy", "dict"),
    "Ly not a number": (
        lambda f: save_pickle(f / "ops.npy", {"fs": 1.0, "Ly": "big", "Lx": 3}),
        "ops.npy",
        "Ly",
    ),
    "no cells": (_save("iscell.npy", np.zeros((4, 2))), "iscell.npy", "pass --all-rois"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_names_the_file(tmp_path: Path, rng: np.random.Generator, case: str) -> None:
    mutate, filename, problem = BAD_INPUT[case]
    stat = make_stat(4, (24, 20), rng)
    stat[1]["ypix"], stat[1]["xpix"], stat[1]["lam"] = np.array([1, 2]), np.array([1, 2]), [1, 1]
    write_plane(tmp_path, traces(rng, 4, 10), rng=rng, stat=stat)
    mutate(tmp_path)
    with pytest.raises(InputError) as info:
        READER.open(tmp_path)
    assert Path(info.value.path).name == filename and problem in str(info.value)


@pytest.mark.parametrize(
    ("shape", "problem"), [((4, 0), "no frames"), ((0, 10), "no ROIs")], ids=["frames", "rois"]
)
def test_empty_recording(tmp_path: Path, rng: np.random.Generator, shape, problem) -> None:
    write_plane(
        tmp_path, np.zeros(shape, np.float32), rng=rng, stat=make_stat(shape[0], (24, 20), rng)
    )
    with pytest.raises(InputError, match=rf"F\.npy.*{problem}"):
        READER.open(tmp_path)


def test_not_a_suite2p_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        READER.open(tmp_path / "nope")
    with pytest.raises(InputError, match="not a Suite2p output folder"):
        READER.open(tmp_path)
    (tmp_path / "x.npy").write_bytes(b"")
    with pytest.raises(InputError, match="found a file"):
        READER.open(tmp_path / "x.npy")


def test_plane_folder_missing_in_parent(tmp_path: Path, rng: np.random.Generator) -> None:
    write_planes(tmp_path, rng, [8, 8], [2, 2])
    (tmp_path / "plane1" / "stat.npy").unlink()
    with pytest.raises(InputError, match=r"plane1/stat\.npy"):
        READER.open(tmp_path)


class _Exploit:
    """A pickle that runs code when loaded: creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("name", ["stat.npy", "ops.npy"])
def test_malicious_pickle_is_refused(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    folder = tmp_path / "plane0"
    write_plane(folder, traces(rng, 2, 5), rng=rng)
    payload = [
        {
            "ypix": np.array([1]),
            "xpix": np.array([1]),
            "lam": [1.0],
            "med": [1, 1],
            "evil": _Exploit(tmp_path / "pwned"),
        }
    ] * 2
    save_pickle(
        folder / name, payload if name == "stat.npy" else {"evil": _Exploit(tmp_path / "pwned")}
    )
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")):
        READER.open(folder)
    assert not (tmp_path / "pwned").exists()
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "control")))  # the payload is real
    assert (tmp_path / "control").exists()


# --- discovery -------------------------------------------------------------------------------


def test_guess_can_open(tmp_path: Path, rng: np.random.Generator) -> None:
    session = tmp_path / "session"
    write_planes(session / "suite2p", rng, [8, 8], [2, 2])
    assert READER.guess_can_open(session / "suite2p" / "plane0")
    assert READER.guess_can_open(session / "suite2p")
    assert READER.guess_can_open(session)
    assert READER.guess_can_open(str(session / "suite2p"))
    assert not READER.guess_can_open(tmp_path / "missing")
    assert not READER.guess_can_open(session / "suite2p" / "plane0" / "F.npy")
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "other" / "dff.npy", np.zeros((3, 3)))
    assert not READER.guess_can_open(tmp_path / "other")
    assert READER.open(session).sizes["roi"] == 4  # a session folder holding suite2p/


def test_open_recording_dispatches_to_suite2p(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    present = tuple(
        m for m in base.READER_MODULES if importlib.util.find_spec(f"cst_neuro.io.{m}") is not None
    )
    monkeypatch.setattr(base, "READER_MODULES", present)  # other formats may not exist yet
    write_planes(tmp_path, rng, [8, 6], [2, 3])
    ds = open_recording(tmp_path)
    assert ds.attrs["source_format"] == "suite2p" and ds.sizes["roi"] == 5
    assert open_recording(tmp_path, format="suite2p", fs=2.0, neuropil=None).attrs["fs"] == 2.0
    with pytest.raises(InputError, match="do not apply"):
        open_recording(tmp_path, format="suite2p", frame_rate=3.0)


def test_source_name_is_relative(tmp_path: Path, rng: np.random.Generator) -> None:
    write_planes(tmp_path / "mouse1" / "suite2p", rng, [8], [2])
    ds = READER.open(tmp_path / "mouse1" / "suite2p" / "plane0")
    assert ds.attrs["source_name"] == "mouse1/suite2p/plane0"
    assert not os.path.isabs(ds.attrs["source_name"])


@pytest.mark.parametrize(
    ("badframes", "problem"),
    [
        (np.array([3, 17]), "values other than 0 and 1"),
        (np.zeros((30, 2)), "float64 array \\(30, 2\\)"),
        (np.array(["yes"] * 30), "<U3 array"),
        ("frames 3 and 17", "badframes is str"),
        (np.zeros(31), "flags 31 frames but the traces have 30"),
    ],
)
def test_malformed_badframes_are_an_error(
    tmp_path: Path, rng: np.random.Generator, badframes: object, problem: str
) -> None:
    folder = tmp_path / "plane0"
    write_plane(folder, traces(rng, 4, 30), rng=rng, layout="1.x")
    save_pickle(folder / "reg_outputs.npy", {"badframes": badframes})
    with pytest.raises(InputError, match=rf"reg_outputs\.npy: .*{problem}"):
        READER.open(folder)
