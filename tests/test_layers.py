"""cst_neuro.layers and the napari plugin's Qt-free modules, without napari.

Label rendering against a naive loop, scales and units, metadata, laziness, what the
reader hook accepts, and both real Suite2p folders (skipped when ../shared is absent).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cst_neuro.layers import (
    can_open,
    is_cst_store,
    open_for_viewing,
    read_layers,
    recording_layers,
    roi_labels,
)
from cst_neuro.schema import frame_times, new_recording
from napari_plugin._reader import napari_get_reader, read_recording

SUITE2P = ("v0_fissa_rochefort", "v1_optinist_mouse2p")


def recording(
    footprints: tuple[np.ndarray, ...] | None = None,
    *,
    n_roi: int = 4,
    shape: tuple[int, int] = (12, 10),
    n_frames: int = 30,
    fs: float = 20.0,
    t0: float = 0.0,
    grid: object = None,
    mean_image: bool = True,
) -> xr.Dataset:
    """A small valid Recording: traces, optional footprints/mean image/grid."""
    rng = np.random.default_rng(0)
    data_vars: dict[str, object] = {
        "F": (("time", "roi"), rng.random((n_frames, n_roi), dtype=np.float32))
    }
    coords: dict[str, object] = {"roi": ("roi", np.arange(n_roi) * 10)}
    if footprints is not None:
        for name, values in zip(("roi", "y", "x", "weight"), footprints, strict=True):
            data_vars[f"footprint_{name}"] = ("pix", values)
    if mean_image or grid is not None:
        coords["y"] = ("y", np.arange(shape[0], dtype=np.float64), {"units": "pixels"})
        coords["x"] = ("x", np.arange(shape[1], dtype=np.float64), {"units": "pixels"})
    if mean_image:
        data_vars["mean_image"] = (("y", "x"), rng.random(shape, dtype=np.float32))
    if grid is not None:
        data_vars["grid"] = (("time", "y", "x"), grid)
    return new_recording(
        data_vars,
        time=frame_times(n_frames, fs, t0),
        fs=fs,
        source_format="test",
        source_name="toy",
        coords=coords,
        attrs={"nplanes": 1},
    )


def random_footprints(rng: np.random.Generator, n_roi: int, shape: tuple[int, int], n: int):
    """Overlapping footprints with repeated (roi, pixel) entries and integer weights (ties)."""
    roi = rng.integers(0, n_roi, n).astype(np.int32)
    y = rng.integers(0, shape[0], n).astype(np.int32)
    x = rng.integers(0, shape[1], n).astype(np.int32)
    w = rng.integers(1, 4, n).astype(np.float32)
    return roi, y, x, w


def naive_labels(roi, y, x, w, shape) -> np.ndarray:
    """Per pixel: sum weights per ROI, take the heaviest, the lowest ROI on ties."""
    acc: dict[tuple[int, int], dict[int, float]] = {}
    for r, yy, xx, ww in zip(roi.tolist(), y.tolist(), x.tolist(), w.tolist(), strict=True):
        per_roi = acc.setdefault((yy, xx), {})
        per_roi[r] = per_roi.get(r, 0.0) + ww
    out = np.zeros(shape, dtype=np.int32)
    for (yy, xx), per_roi in acc.items():
        out[yy, xx] = max(sorted(per_roi), key=per_roi.__getitem__) + 1
    return out


def by_variable(layers: list) -> dict[str, tuple]:
    return {kwargs["metadata"]["variable"]: (data, kwargs, kind) for data, kwargs, kind in layers}


# ---- labels -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_roi_labels_match_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape, n_roi = (12, 10), 7
    fp = random_footprints(rng, n_roi, shape, 300)
    ds = recording(fp, n_roi=n_roi, shape=shape)
    labels = roi_labels(ds)
    assert labels.dtype == np.int32 and labels.shape == shape
    np.testing.assert_array_equal(labels, naive_labels(*fp, shape))


def test_roi_labels_highest_weight_wins_and_repeats_add_up() -> None:
    roi = np.array([0, 1, 1, 2, 2], np.int32)
    y = np.array([1, 1, 1, 3, 3], np.int32)
    x = np.array([2, 2, 2, 4, 4], np.int32)
    w = np.array([0.5, 0.3, 0.3, 0.2, 0.2], np.float32)  # ROI 1: 0.6 beats 0.5
    ds = recording((roi, y, x, w), n_roi=3)
    labels = roi_labels(ds)
    assert labels[1, 2] == 2 and labels[3, 4] == 3
    assert np.count_nonzero(labels) == 2


def test_roi_labels_of_a_simulation(simulate_recording: Any) -> None:
    ds = simulate_recording(25, 20, dff=False, fov=(64, 64), seed=3)[1]
    fp = [ds[f"footprint_{k}"].values for k in ("roi", "y", "x", "weight")]
    labels = roi_labels(ds)
    np.testing.assert_array_equal(labels, naive_labels(*fp, (64, 64)))
    assert set(np.unique(labels)) == set(range(26))


def test_roi_labels_on_several_planes(simulate_recording: Any) -> None:
    ds = simulate_recording(20, 20, dff=False, fov=(48, 48), n_planes=2, seed=1)[1]
    layers = by_variable(recording_layers(ds))
    labels, kwargs, kind = layers["footprints"]
    assert kind == "labels" and labels.shape == (2, 48, 48)
    assert kwargs["axis_labels"] == ("plane", "y", "x")
    assert layers["mean_image"][0].shape == (2, 48, 48)
    fp = [ds[f"footprint_{k}"].values for k in ("roi", "y", "x", "weight")]
    plane_of = ds["roi_plane"].values[fp[0]]
    for p in (0, 1):
        on = plane_of == p
        expected = naive_labels(*(a[on] for a in fp), (48, 48))
        np.testing.assert_array_equal(labels[p], expected)


def test_labels_features_one_row_per_label() -> None:
    fp = random_footprints(np.random.default_rng(1), 4, (12, 10), 50)
    ds = recording(fp).assign(cell_prob=("roi", np.array([0.1, 0.9, 0.5, 0.7], np.float32)))
    (_, kwargs, _) = by_variable(recording_layers(ds))["footprints"]
    features = kwargs["features"]
    np.testing.assert_array_equal(features["index"], np.arange(5))
    np.testing.assert_array_equal(features["roi"], [-1, 0, 10, 20, 30])
    assert np.isnan(features["cell_prob"][0]) and features["cell_prob"][2] == np.float32(0.9)


# ---- scales, units, metadata ------------------------------------------------------------


def test_time_series_scale_units_and_metadata() -> None:
    grid = np.random.default_rng(0).random((30, 12, 10), dtype=np.float32)
    ds = recording(random_footprints(np.random.default_rng(2), 4, (12, 10), 40), grid=grid,
                   fs=20.0, t0=1.5)  # fmt: skip
    layers = recording_layers(ds)
    assert [k["metadata"]["variable"] for _, k, _ in layers] == [
        "mean_image",
        "grid",
        "footprints",
    ]
    assert [kind for _, _, kind in layers] == ["image", "image", "labels"]
    data, kwargs, _ = by_variable(layers)["grid"]
    assert data.shape == (30, 12, 10)
    assert kwargs["scale"] == (0.05, 1.0, 1.0)
    assert kwargs["translate"] == (1.5, 0.0, 0.0)
    assert kwargs["axis_labels"] == ("time", "y", "x")
    assert kwargs["units"] == ("s", "pixel", "pixel")
    lo, hi = kwargs["contrast_limits"]
    assert 0.0 <= lo < hi <= 1.0
    for _, kwargs, _ in layers:
        meta = kwargs["metadata"]
        assert meta["recording"] is ds
        assert meta["fs"] == 20.0 and meta["source_format"] == "test" and meta["nplanes"] == 1
        assert meta["axis_labels"] == kwargs["axis_labels"] and meta["units"] == kwargs["units"]
        assert kwargs["name"].startswith("toy ")


def test_binned_images_line_up_with_footprints(simulate_recording: Any) -> None:
    from cst_neuro.grid import bin_movie, render_grid

    ds = simulate_recording(20, 40, dff=False, fov=(64, 64), seed=2)[1]
    ds = ds.assign(dff=ds["F"])
    binned = render_grid(ds, var="dff", bin=4)
    ds = ds.drop_dims(["y", "x"]).assign(mean_image=bin_movie(ds["mean_image"], 4)).merge(binned)
    layers = by_variable(recording_layers(ds))
    for var in ("mean_image", "grid"):
        kwargs = layers[var][1]
        assert kwargs["scale"][-2:] == (4.0, 4.0)
        assert kwargs["translate"][-2:] == (1.5, 1.5)  # block of pixels 0..3 is centred at 1.5
    assert layers["grid"][1]["scale"][0] == pytest.approx(1 / 30)
    labels, kwargs, _ = layers["footprints"]
    assert labels.shape == (64, 64) and kwargs["scale"] == (1.0, 1.0)
    assert np.isfinite(layers["grid"][1]["contrast_limits"]).all()  # NaN outside ROIs ignored


# ---- laziness ---------------------------------------------------------------------------


class CountingFrames:
    """An array-like that records which frames were read."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape, self.dtype, self.ndim = values.shape, values.dtype, values.ndim
        self.frames: set[int] = set()

    def __getitem__(self, key: tuple) -> np.ndarray:
        self.frames.update(np.arange(self.shape[0])[key[0]].tolist())
        return self.values[key]


def test_time_series_stay_lazy() -> None:
    source = CountingFrames(np.random.default_rng(0).random((100, 12, 10), dtype=np.float32))
    grid = da.from_array(source, chunks=(1, 12, 10))
    ds = recording(random_footprints(np.random.default_rng(3), 4, (12, 10), 40), grid=grid,
                   n_frames=100)  # fmt: skip
    ds = ds.assign(movie=(("time", "y", "x"), grid.astype(np.int16)))
    source.frames.clear()
    layers = by_variable(recording_layers(ds))
    for var in ("grid", "movie"):
        assert isinstance(layers[var][0], da.Array)
    assert source.frames <= {0, 50, 99}  # contrast limits from three frames, nothing more


def test_lazy_mean_image_stays_lazy() -> None:
    grid = da.from_array(np.ones((20, 12, 10), np.float32), chunks=(5, 12, 10))
    ds = recording(grid=grid, mean_image=False, n_frames=20)
    ds = ds.assign(mean_image=ds["grid"].mean("time"))
    data, kwargs, _ = by_variable(recording_layers(ds))["mean_image"]
    assert isinstance(data, da.Array) and "contrast_limits" not in kwargs
    assert kwargs.get("visible", True)  # small: shown


def test_mean_image_of_a_large_movie_starts_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import cst_neuro.layers

    grid = da.from_array(np.ones((40, 12, 10), np.float32), chunks=(2, 12, 10))
    ds = recording(grid=grid, mean_image=False, n_frames=40)
    ds = ds.assign(mean_image=ds["grid"].mean("time"))
    monkeypatch.setattr(cst_neuro.layers, "COSTLY_BYTES", 1000)  # "large" for this test
    data, kwargs, _ = by_variable(recording_layers(ds))["mean_image"]
    assert kwargs["visible"] is False and isinstance(data, da.Array)


# ---- what there is to show --------------------------------------------------------------


def test_traces_only_gives_no_layers_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    ds = recording(mean_image=False)
    with caplog.at_level(logging.WARNING, logger="cst_neuro"):
        assert recording_layers(ds) == []
    assert "nothing to display" in caplog.text and "toy" in caplog.text


def test_footprints_without_images_give_labels_only() -> None:
    fp = random_footprints(np.random.default_rng(4), 4, (12, 10), 40)
    layers = recording_layers(recording(fp, mean_image=False))
    assert [kind for _, _, kind in layers] == ["labels"]
    assert layers[0][0].shape == (int(fp[1].max()) + 1, int(fp[2].max()) + 1)


@pytest.mark.parametrize("name", SUITE2P)
def test_real_suite2p_folders(shared_data, name: str) -> None:
    folder = shared_data / "suite2p" / name
    assert can_open(folder)
    layers = by_variable(read_layers(folder))
    assert set(layers) == {"mean_image", "footprints"}
    image, image_kwargs, _ = layers["mean_image"]
    labels, kwargs, kind = layers["footprints"]
    ds = kwargs["metadata"]["recording"]
    assert kind == "labels" and labels.shape == image.shape
    assert labels.max() == ds.sizes["roi"] and len(np.unique(labels)) == ds.sizes["roi"] + 1
    fp = [ds[f"footprint_{k}"].values for k in ("roi", "y", "x", "weight")]
    np.testing.assert_array_equal(labels, naive_labels(*fp, labels.shape))
    assert kwargs["metadata"]["source_format"] == "suite2p"
    assert image_kwargs["scale"] == (1.0, 1.0) and image_kwargs["units"] == ("pixel", "pixel")


# ---- opening: stores, missing rates, junk -----------------------------------------------


def test_store_opens_and_plain_zarr_does_not(tmp_path) -> None:
    from cst_neuro.simulate import write_simulation

    store = write_simulation(tmp_path / "sim.zarr", layout="zarr", n_rois=20, n_frames=60,
                             fov=(64, 64), seed=0)  # fmt: skip
    assert is_cst_store(store) and can_open(store)
    layers = by_variable(read_layers(store))
    assert set(layers) == {"mean_image", "footprints"}
    assert isinstance(layers["mean_image"][0], da.Array)  # read lazily from the store
    assert layers["footprints"][0].max() == 20
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    assert not is_cst_store(plain) and not can_open(plain)


def test_movie_without_rate_opens_in_frames(tmp_path, caplog) -> None:
    import tifffile

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.arange(10 * 8 * 6, dtype=np.uint16).reshape(10, 8, 6))
    with caplog.at_level(logging.WARNING, logger="cst_neuro"):
        ds = open_for_viewing(path)
    assert ds.attrs["fs_assumed"] is True and ds.attrs["fs"] == 1.0
    assert "no sampling rate" in caplog.text and "--fs" in caplog.text
    layers = by_variable(recording_layers(ds))
    assert layers["grid"][1]["scale"] == (1.0, 1.0, 1.0)


def test_junk_is_refused_without_raising(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a recording")
    fake_npy = tmp_path / "fake.npy"
    fake_npy.write_text("not numpy")
    for path in (text, fake_npy, tmp_path / "missing.npy", tmp_path, str(text), [text, text]):
        assert napari_get_reader(path) is None
    nothing: Any = None  # what napari may pass when it has no path
    assert napari_get_reader(nothing) is None


def test_reader_hook_on_a_suite2p_folder_and_traces(tmp_path) -> None:
    from cst_neuro.simulate import write_simulation

    folder = write_simulation(tmp_path / "s2p", layout="suite2p-v0", n_rois=20, n_frames=60,
                              fov=(64, 64), data_bin=True)  # fmt: skip
    reader = napari_get_reader(str(folder))
    assert reader is read_recording
    layers = by_variable(reader([str(folder)]))
    assert set(layers) == {"mean_image", "movie", "footprints"}
    assert layers["movie"][0].shape == (60, 64, 64) and isinstance(layers["movie"][0], da.Array)
    traces = tmp_path / "dff.npy"
    np.save(traces, np.zeros(100, np.float32))  # one ROI: time axis unambiguous
    assert napari_get_reader(traces) is read_recording
    with pytest.warns(UserWarning) as record:
        assert read_recording(str(traces)) == [(None,)]  # napari's "read, no layers"
    messages = [str(w.message) for w in record]
    assert any("no sampling rate" in m for m in messages)
    assert any("nothing to display" in m for m in messages)


def test_sample_data() -> None:
    from napari_plugin._sample_data import make_sample_data

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layers = by_variable(make_sample_data())
    assert set(layers) == {"mean_image", "movie", "footprints"}
    movie, kwargs, _ = layers["movie"]
    assert movie.shape == (600, 128, 128) and kwargs["scale"][0] == pytest.approx(1 / 30)
    assert layers["footprints"][0].max() == 60
    assert "dff" in kwargs["metadata"]["recording"]


def test_imports_load_neither_napari_nor_qt() -> None:
    code = (
        "import sys, napari_plugin, napari_plugin._reader, napari_plugin._sample_data, "
        "cst_neuro.layers; napari_plugin.napari_get_reader; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy', 'magicgui'}); "
        "print(bad); assert not bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
