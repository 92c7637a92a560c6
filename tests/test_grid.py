"""Grids (cst_neuro.grid) against dense, loop-based renderings."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro import grid as grid_module
from cst_neuro.errors import InputError
from cst_neuro.grid import bin_movie, render_grid
from cst_neuro.io import npy
from cst_neuro.schema import frame_times, new_recording

SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)


def recording(traces, pixels, shape=None, *, attrs=None, chunks=None, coords=None):
    """A Recording with ``dff`` traces (time, roi) and footprints [(roi, y, x, w), ...].

    ``shape`` adds a ``mean_image`` (y, x), which gives the image its size and coords.
    """
    T = traces.shape[0]
    data = traces if chunks is None else da.from_array(traces, chunks=chunks)
    roi, y, x, w = (np.array(v) for v in zip(*pixels, strict=True)) if pixels else ([],) * 4
    data_vars = {
        "dff": (("time", "roi"), data),
        "footprint_roi": ("pix", np.asarray(roi, np.int32)),
        "footprint_y": ("pix", np.asarray(y, np.int32)),
        "footprint_x": ("pix", np.asarray(x, np.int32)),
        "footprint_weight": ("pix", np.asarray(w, np.float32)),
    }
    if shape is not None:
        data_vars["mean_image"] = (("y", "x"), np.zeros(shape, np.float32))
    return new_recording(
        data_vars,
        time=frame_times(T, 5.0),
        fs=5.0,
        source_format="test",
        source_name="grid.npy",
        coords=coords,
        attrs=attrs,
    )


def naive_render(traces, pixels, shape):
    """Per-pixel lam-weighted mean over the ROIs with a finite sample, by loops."""
    T = traces.shape[0]
    num = np.zeros((T, *shape))
    den = np.zeros((T, *shape))
    for r, y, x, w in pixels:
        for t in range(T):
            if np.isfinite(traces[t, r]):
                num[t, y, x] += w * traces[t, r]
                den[t, y, x] += w
    out = np.full((T, *shape), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    covered = np.zeros(shape, bool)
    for _, y, x, w in pixels:
        covered[y, x] |= w > 0
    return out, covered


def naive_binned(traces, pixels, shape, b):
    """The documented block rule, by loops: ROI weights A[r, block], mean over present ROIs."""
    T, R = traces.shape
    Yb, Xb = shape[0] // b, shape[1] // b
    total = np.zeros(shape)
    for _, y, x, w in pixels:
        total[y, x] += w
    n_cov = np.zeros((Yb, Xb))
    for y in range(Yb * b):
        for x in range(Xb * b):
            n_cov[y // b, x // b] += total[y, x] > 0
    A = np.zeros((R, Yb, Xb))
    for r, y, x, w in pixels:
        if y < Yb * b and x < Xb * b and w > 0:
            A[r, y // b, x // b] += w / total[y, x] / n_cov[y // b, x // b]
    out = np.full((T, Yb, Xb), np.nan)
    for t in range(T):
        for by in range(Yb):
            for bx in range(Xb):
                ok = np.isfinite(traces[t]) & (A[:, by, bx] > 0)
                if ok.any():
                    weights = A[ok, by, bx]
                    out[t, by, bx] = weights @ traces[t, ok] / weights.sum()
    return out, n_cov > 0


@st.composite
def scenes(draw, nan=True):
    T, R = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    values = st.floats(-10, 10, width=32)
    if nan:
        values = st.one_of(values, st.just(float("nan")))
    traces = np.array(draw(st.lists(values, min_size=T * R, max_size=T * R)), np.float32)
    pixel = st.tuples(
        st.integers(0, R - 1),
        st.integers(0, shape[0] - 1),
        st.integers(0, shape[1] - 1),
        st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0]),
    )
    pixels = draw(st.lists(pixel, min_size=1, max_size=40))  # overlaps and repeats included
    b = draw(st.integers(1, min(shape)))
    return traces.reshape(T, R), pixels, shape, b


@SETTINGS
@given(scenes())
def test_render_equals_dense_naive_rendering(scene):
    traces, pixels, shape, _ = scene
    out = render_grid(recording(traces, pixels, shape))
    want, covered = naive_render(traces, pixels, shape)
    assert out["grid"].dims == ("time", "y", "x") and out["grid"].dtype == np.float32
    got = out["grid"].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["grid_mask"].values, covered)
    assert np.isnan(got[:, ~covered]).all()


@SETTINGS
@given(scenes(nan=False))
def test_binning_equals_block_means_of_the_pixel_grid(scene):
    traces, pixels, shape, b = scene
    pixel_grid, covered = naive_render(traces, pixels, shape)
    Yb, Xb = shape[0] // b, shape[1] // b
    blocks = pixel_grid[:, : Yb * b, : Xb * b].reshape(-1, Yb, b, Xb, b)
    with warnings.catch_warnings():  # blocks without any covered pixel: mean of nothing
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmean(blocks, axis=(2, 4))
    out = render_grid(recording(traces, pixels, shape), bin=b)
    np.testing.assert_allclose(out["grid"].values, want, rtol=1e-5, atol=1e-5)
    mask = covered[: Yb * b, : Xb * b].reshape(Yb, b, Xb, b).any(axis=(1, 3))
    np.testing.assert_array_equal(out["grid_mask"].values, mask)


@SETTINGS
@given(scenes())
def test_binning_with_missing_samples_follows_documented_rule(scene):
    traces, pixels, shape, b = scene
    want, mask = naive_binned(traces, pixels, shape, b)
    out = render_grid(recording(traces, pixels, shape), bin=b)
    got = out["grid"].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["grid_mask"].values, mask)


def test_nan_roi_does_not_poison_overlapping_pixels():
    traces = np.array([[1.0, np.nan], [2.0, 4.0]], np.float32)
    pixels = [(0, 0, 0, 1.0), (1, 0, 0, 3.0), (1, 0, 1, 1.0)]
    got = render_grid(recording(traces, pixels, (1, 2)))["grid"].values
    np.testing.assert_allclose(got[0], [[1.0, np.nan]])
    np.testing.assert_allclose(got[1], [[(2.0 + 3 * 4.0) / 4, 4.0]])


def test_block_coordinates_are_centres_in_input_units():
    traces = np.ones((2, 1), np.float32)
    pixels = [(0, y, x, 1.0) for y in range(7) for x in range(5)]
    out = render_grid(recording(traces, pixels, (7, 5)), bin=2)
    np.testing.assert_array_equal(out["y"].values, [0.5, 2.5, 4.5])
    np.testing.assert_array_equal(out["x"].values, [0.5, 2.5])
    np.testing.assert_array_equal(out["time"].values, frame_times(2, 5.0))
    coords = {"y": ("y", 10.0 + 2 * np.arange(7)), "x": ("x", np.arange(5.0))}
    shifted = render_grid(recording(traces, pixels, (7, 5), coords=coords), bin=3)
    np.testing.assert_array_equal(shifted["y"].values, [12.0, 18.0])
    assert out["grid"].attrs["bin"] == 2 and out["grid"].attrs["source_var"] == "dff"


def test_image_size_from_dims_attrs_or_footprint_extent():
    traces = np.ones((3, 2), np.float32)
    pixels = [(0, 1, 2, 1.0), (1, 3, 0, 1.0)]
    assert render_grid(recording(traces, pixels, (6, 8)))["grid"].shape == (3, 6, 8)
    attrs = {"Ly": 5, "Lx": 4}
    assert render_grid(recording(traces, pixels, attrs=attrs))["grid"].shape == (3, 5, 4)
    assert render_grid(recording(traces, pixels))["grid"].shape == (3, 4, 3)


@pytest.mark.parametrize("chunks", [None, (1, 3), (4, -1), (-1, 1)])
def test_grid_is_lazy_and_chunking_does_not_change_values(rng, chunks):
    traces = rng.normal(size=(9, 3)).astype(np.float32)
    traces[4, 1] = np.nan
    pixels = [(r, y, x, 1.0 + r) for r in range(3) for y in range(r, r + 3) for x in range(4)]
    eager = render_grid(recording(traces, pixels, (6, 5)), bin=2)
    lazy = render_grid(recording(traces, pixels, (6, 5), chunks=chunks), bin=2)
    assert isinstance(lazy["grid"].data, da.Array) and isinstance(eager["grid"].data, da.Array)
    np.testing.assert_array_equal(lazy["grid"].values, eager["grid"].values)


def test_grid_graph_builds_without_computing_and_bounds_chunks(monkeypatch):
    T, R, shape = 50, 4, (8, 8)
    monkeypatch.setattr(npy, "CHUNK_BYTES", 4 * 64 * 7)  # 7 frames per chunk

    def explode(block):
        raise AssertionError("computed while building the graph")

    zeros = da.zeros((T, R), chunks=(10, 2), dtype=np.float32)
    traces = da.map_blocks(explode, zeros, dtype=np.float32, meta=np.empty((0, 0), np.float32))
    pixels = [(r, r, x, 1.0) for r in range(R) for x in range(8)]
    ds = recording(np.zeros((T, R), np.float32), pixels, shape)
    ds["dff"] = (("time", "roi"), traces)
    out = render_grid(ds)
    assert out["grid"].chunks == ((7,) * 7 + (1,), (8,), (8,))
    ok = recording(np.ones((T, R), np.float32), pixels, shape, chunks=(10, 2))
    with dask.config.set(scheduler="synchronous"):
        assert float(render_grid(ok)["grid"].sum()) == T * R * 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bin": 0}, "bin must be a whole number"),
        ({"bin": -2}, "bin must be a whole number"),
        ({"bin": 1.5}, "bin must be a whole number"),
        ({"bin": True}, "bin must be a whole number"),
        ({"bin": 5}, "larger than the 4 x 6 image"),
        ({"var": "spks"}, "no variable 'spks'"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, message):
    ds = recording(np.ones((2, 1), np.float32), [(0, 1, 1, 1.0)], (4, 6))
    with pytest.raises(InputError, match=message) as info:
        render_grid(ds, **kwargs)
    assert info.value.path == "grid.npy"


def test_bad_footprints_raise_input_error():
    traces = np.ones((2, 2), np.float32)
    with pytest.raises(InputError, match="no ROI footprints"):
        render_grid(recording(traces, [], (3, 3)))
    with pytest.raises(InputError, match="no ROI footprints"):
        render_grid(recording(traces, [(0, 0, 0, 1.0)], (3, 3)).drop_vars("footprint_weight"))
    with pytest.raises(InputError, match="footprint_y holds indices"):
        render_grid(recording(traces, [(0, 3, 0, 1.0)], (3, 3)))
    with pytest.raises(InputError, match="footprint_roi holds indices"):
        render_grid(recording(traces, [(2, 0, 0, 1.0)], (3, 3)))
    with pytest.raises(InputError, match="finite and >= 0"):
        render_grid(recording(traces, [(0, 0, 0, -1.0)], (3, 3)))


# ---------------------------------------------------------------------------------------
# bin_movie


@SETTINGS
@given(
    st.integers(1, 4).flatmap(
        lambda b: st.tuples(
            st.just(b), st.integers(1, 3), st.integers(b, 11), st.integers(b, 11), st.booleans()
        )
    )
)
def test_bin_movie_equals_naive_block_means(case):
    b, T, Ly, Lx, chunked = case
    rng = np.random.default_rng(T * 1000 + Ly * 10 + Lx)
    values = rng.integers(0, 1000, (T, Ly, Lx)).astype(np.uint16)
    data = da.from_array(values, chunks=(1, 3, 5)) if chunked else values
    movie = xr.DataArray(data, dims=("time", "y", "x"))
    out = bin_movie(movie, b)
    Yb, Xb = Ly // b, Lx // b
    want = np.zeros((T, Yb, Xb))
    for by in range(Yb):
        for bx in range(Xb):
            want[:, by, bx] = values[:, by * b : by * b + b, bx * b : bx * b + b].mean(axis=(1, 2))
    assert out.dtype == np.float32 and out.dims == ("time", "y", "x")
    assert isinstance(out.data, da.Array) == chunked
    np.testing.assert_allclose(out.values, want, rtol=1e-6)
    np.testing.assert_allclose(out["y"].values, np.arange(Yb) * b + (b - 1) / 2)
    np.testing.assert_allclose(out["x"].values, np.arange(Xb) * b + (b - 1) / 2)


def test_bin_movie_skips_nan_and_keeps_coords_units():
    values = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    values[0, 0, 0] = np.nan
    values[1, :2, :2] = np.nan
    movie = xr.DataArray(
        da.from_array(values, chunks=(1, 4, 4)),
        dims=("time", "y", "x"),
        coords={"y": ("y", np.arange(4.0), {"units": "pixels"}), "x": np.arange(4.0)},
    )
    out = bin_movie(movie, 2).values
    assert out[0, 0, 0] == pytest.approx((1 + 4 + 5) / 3)
    assert np.isnan(out[1, 0, 0]) and out[1, 1, 1] == values[1, 2:, 2:].mean()
    assert bin_movie(movie, 2)["y"].attrs["units"] == "pixels"


def test_bin_movie_bad_arguments():
    movie = xr.DataArray(np.zeros((2, 3, 4), np.float32), dims=("time", "y", "x"))
    with pytest.raises(InputError, match="larger than the movie"):
        bin_movie(movie, 4)
    with pytest.raises(InputError, match="bin must be"):
        bin_movie(movie, 0)
    with pytest.raises(InputError, match="dims"):
        bin_movie(movie.rename(x="col"), 2)


def test_real_suite2p_footprints(shared_data):
    from cst_neuro.io import open_recording

    ds = open_recording(shared_data / "suite2p" / "v1_optinist_mouse2p" / "plane0")
    ds = ds.isel(time=slice(0, 40))
    out = render_grid(ds, var="F")
    pixels = list(zip(*(ds[v].values.tolist() for v in grid_module.FOOTPRINT_VARS), strict=True))
    want, covered = naive_render(ds["F"].values, pixels, (ds.sizes["y"], ds.sizes["x"]))
    np.testing.assert_array_equal(out["grid_mask"].values, covered)
    np.testing.assert_allclose(out["grid"].values, want, rtol=1e-5)
