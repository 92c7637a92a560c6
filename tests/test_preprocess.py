"""ΔF/F (cst_neuro.preprocess) against straightforward reference computations."""

from __future__ import annotations

import json
import logging

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cst_neuro import preprocess
from cst_neuro.errors import InputError
from cst_neuro.io import npy
from cst_neuro.preprocess import (
    baseline_maximin,
    baseline_percentile,
    baseline_running_percentile,
    compute_dff,
    delta_f_over_f,
    neuropil_correct,
)
from cst_neuro.schema import frame_times, new_recording

SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)


# ---------------------------------------------------------------------------------------
# references, written independently of the module


def ref_reflect(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """scipy.ndimage "reflect" (d c b a | a b c d | d c b a), repeated, sample by sample."""
    n = x.size
    idx = np.arange(-left, n + right)
    period = 2 * n
    m = np.mod(idx, period)
    return x[np.where(m < n, m, period - 1 - m)]


def ref_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return x.astype(np.float64)
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = ref_reflect(x.astype(np.float64), radius, radius)
    return np.array([padded[i : i + 2 * radius + 1] @ taps for i in range(x.size)])


def ref_windows(x: np.ndarray, win: int) -> list[np.ndarray]:
    """The window of every sample, centred as scipy's filters: i - win//2 .. + win - 1."""
    padded = ref_reflect(x, win // 2, win - 1 - win // 2)
    return [padded[i : i + win] for i in range(x.size)]


def ref_maximin(x: np.ndarray, win: int, sigma: float) -> np.ndarray:
    smooth = ref_gaussian(x, sigma)
    low = np.array([w.min() for w in ref_windows(smooth, win)])
    return np.array([w.max() for w in ref_windows(low, win)])


def ref_running_percentile(x: np.ndarray, win: int, p: float) -> np.ndarray:
    rank = win - 1 if p == 100 else int(win * p / 100.0)
    return np.array([np.sort(w)[rank] for w in ref_windows(x, win)])


def ref_fill(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over missing samples, nearest value beyond the ends (a loop)."""
    good = np.flatnonzero(np.isfinite(x))
    out = x.astype(np.float64).copy()
    for i in np.flatnonzero(~np.isfinite(x)):
        before, after = good[good < i], good[good > i]
        if before.size == 0:
            out[i] = x[after[0]]
        elif after.size == 0:
            out[i] = x[before[-1]]
        else:
            a, b = before[-1], after[0]
            out[i] = x[a] + (x[b] - x[a]) * (i - a) / (b - a)
    return out


traces = (
    st.integers(1, 160)
    .flatmap(lambda n: st.lists(st.floats(-50, 200, width=32), min_size=n, max_size=n))
    .map(lambda v: np.asarray(v, dtype=np.float32))
)


def recording(F, Fneu=None, *, fs=10.0, coefficient=None, chunks=None, name="rec.npy"):
    """A small Recording with (time, roi) traces; dask-backed when chunks is given."""

    def wrap(a):
        return ("time", "roi"), a if chunks is None else da.from_array(a, chunks=chunks)

    data = {"F": wrap(F)}
    if Fneu is not None:
        data["Fneu"] = wrap(Fneu)
    attrs = {} if coefficient is None else {"neuropil_coefficient": coefficient}
    T = F.shape[0]
    return new_recording(
        data,
        time=frame_times(T, fs),
        fs=fs,
        source_format="test",
        source_name=name,
        attrs=attrs,
    )


def positive_traces(rng, T=1500, R=9, level=100.0):
    t = np.arange(T)
    drift = level + 10 * np.sin(2 * np.pi * t / 700.0)[:, None]
    events = rng.exponential(1.0, (T, R)) * (rng.random((T, R)) < 0.02) * 40
    F = drift + ndimage.gaussian_filter1d(events, 3, axis=0) + rng.normal(0, 2, (T, R))
    Fneu = 0.5 * drift + rng.normal(0, 1, (T, R))
    return F.astype(np.float32), Fneu.astype(np.float32)


# ---------------------------------------------------------------------------------------
# baselines


@SETTINGS
@given(x=traces, win=st.integers(1, 60), sigma=st.sampled_from([0.0, 0.1, 0.7, 2.0, 5.5, 30.0]))
def test_maximin_matches_naive_windows(x, win, sigma):
    got = baseline_maximin(x, fs=1.0, win_baseline=float(win), sig_baseline=sigma)
    want = ref_maximin(x, win, sigma)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_maximin_matches_suite2p_scipy_calls(rng):
    # Suite2p: gaussian_filter(F, [0, sig]); minimum_filter1d(., win); maximum_filter1d(., win)
    F = (rng.normal(0, 5, (4, 5000)) + 100).astype(np.float32)
    win = int(60.0 * 7.5)
    flow = ndimage.gaussian_filter(F.astype(np.float64), [0.0, 10.0])
    flow = ndimage.maximum_filter1d(ndimage.minimum_filter1d(flow, win), win)
    got = baseline_maximin(F, fs=7.5, win_baseline=60.0, sig_baseline=10.0)
    np.testing.assert_allclose(got, flow, rtol=2e-6)


@pytest.mark.parametrize("win", [1, 2, 7, 64, 1000, 4097])
def test_running_extreme_equals_scipy(rng, win):
    x = rng.normal(size=3001).astype(np.float32)
    work = preprocess._Workspace(x.size, win, sigma=0.0)
    got = work.running_extreme(x, win, np.minimum, out=np.empty_like(x))
    np.testing.assert_array_equal(got, ndimage.minimum_filter1d(x, win))
    got = work.running_extreme(x, win, np.maximum, out=np.empty_like(x))
    np.testing.assert_array_equal(got, ndimage.maximum_filter1d(x, win))


@SETTINGS
@given(x=traces, win=st.integers(1, 50), p=st.sampled_from([0.0, 8.0, 33.3, 50.0, 99.0, 100.0]))
@example(x=np.array([1.0, 0.0, 0.0, 1.0], np.float32), win=32, p=50.0)  # window ≫ trace
def test_running_percentile_matches_naive_windows(x, win, p):
    got = baseline_running_percentile(x, fs=1.0, win_baseline=float(win), prctile_baseline=p)
    np.testing.assert_array_equal(got, ref_running_percentile(x, win, p).astype(np.float32))


def test_running_percentile_on_rows(rng):
    F = rng.normal(size=(3, 400)).astype(np.float32)
    got = baseline_running_percentile(F, fs=2.0, win_baseline=10.0, prctile_baseline=20.0)
    for row, x in zip(got, F, strict=True):
        np.testing.assert_array_equal(row, ref_running_percentile(x, 20, 20.0))


@SETTINGS
@given(x=traces, p=st.floats(0, 100))
def test_prctile_is_nanpercentile_of_whole_trace(x, p):
    x = x.copy()
    x[::5] = np.nan
    got = baseline_percentile(x[None, :], prctile_baseline=p)
    assert got.shape == (1, 1)
    if np.isfinite(x).any():
        np.testing.assert_allclose(
            got[0, 0], np.nanpercentile(x.astype(np.float64), p), rtol=1e-5, atol=1e-4
        )
    else:
        assert np.isnan(got[0, 0])


@SETTINGS
@given(x=traces, win=st.integers(1, 40), gap=st.tuples(st.integers(0, 159), st.integers(1, 30)))
def test_missing_samples_are_interpolated_for_filtering(x, win, gap):
    start, length = gap
    x = x.copy()
    x[start : start + length] = np.nan
    if not np.isfinite(x).any():
        assert np.isnan(baseline_maximin(x, fs=1.0, win_baseline=win, sig_baseline=2.0)).all()
        return
    got = baseline_maximin(x, fs=1.0, win_baseline=float(win), sig_baseline=2.0)
    np.testing.assert_allclose(got, ref_maximin(ref_fill(x), win, 2.0), rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------
# neuropil and the guarded ratio


def test_neuropil_correct(rng):
    F, Fneu = (rng.normal(100, 5, (3, 50)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(neuropil_correct(F, Fneu, 0.7), F - np.float32(0.7) * Fneu)
    np.testing.assert_array_equal(neuropil_correct(F, Fneu, 0.0), F)
    np.testing.assert_array_equal(neuropil_correct(F), F)
    with pytest.raises(InputError, match="shape"):
        neuropil_correct(F, Fneu[:, :10])
    with pytest.raises(InputError, match=r"neuropil = -0\.1 must be >= 0"):
        neuropil_correct(F, Fneu, -0.1)


@SETTINGS
@given(
    fc=traces, f0=st.floats(-20, 20, width=32), scale=st.floats(0.5, 100), frac=st.floats(0.001, 1)
)
def test_guard_never_divides_by_near_zero(fc, f0, scale, frac):
    fc = fc.copy()
    fc[::7] = np.nan
    dff, guarded = delta_f_over_f(fc, np.float32(f0), scale=scale, guard_fraction=frac)
    floor = np.float32(frac * scale)
    good = np.isfinite(fc)
    assert np.isfinite(dff[good]).all() and np.isnan(dff[~good]).all()
    denominator = max(np.float32(f0), floor)
    np.testing.assert_allclose(dff[good], (fc[good] - np.float32(f0)) / denominator, rtol=1e-6)
    assert guarded == (good.sum() if np.float32(f0) < floor else 0)


def test_guard_saturates_instead_of_overflowing():
    fc = np.array([3e38, -3e38, 1.0], dtype=np.float32)
    dff, guarded = delta_f_over_f(fc, np.float32(-1e30), scale=1e-6)
    assert np.isfinite(dff).all() and guarded == 3


def test_compute_dff_counts_guarded_samples(rng):
    F, Fneu = positive_traces(rng, T=600, R=4)
    Fneu[:, 1] = F[:, 1] / 0.7 + 5.0  # over-subtracted: Fc < 0 everywhere
    Fneu[:, 2] = F[:, 2] / 0.7  # Fc == 0: baseline exactly zero
    out = compute_dff(recording(F, Fneu, coefficient=0.7), win_baseline=20.0)
    dff, guarded = out["dff"].values, out["dff_guarded"].values
    assert np.isfinite(dff).all()
    assert guarded[0] == 0 and guarded[3] == 0
    assert guarded[1] == 600 and guarded[2] == 600
    # the guarded denominator is the floor: 1 % of the ROI's mean |F|
    Fc = F[:, 1] - np.float32(0.7) * Fneu[:, 1]
    f0 = baseline_maximin(Fc, fs=10.0, win_baseline=20.0)
    floor = 0.01 * np.abs(F[:, 1]).astype(np.float64).mean()
    np.testing.assert_allclose(dff[:, 1], (Fc - f0) / np.float32(floor), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# compute_dff on Recordings


def reference_dff(F, Fneu, r, method, win, sigma=10.0, p=8.0, frac=0.01):
    """ΔF/F per ROI from the reference pieces above (columns of (time, roi) arrays)."""
    out = np.empty(F.shape, np.float32)
    for j in range(F.shape[1]):
        f = F[:, j].astype(np.float32)
        fc = f - np.float32(r) * Fneu[:, j] if r else f
        if method == "none":
            out[:, j] = fc
            continue
        filled = ref_fill(fc).astype(np.float32)
        if method == "maximin":
            f0 = ref_maximin(filled, win, sigma)
        elif method == "percentile":
            f0 = ref_running_percentile(filled, win, p)
        else:
            f0 = np.full(fc.shape, np.nanpercentile(fc.astype(np.float64), p))
        scale = np.abs(f[np.isfinite(f)]).astype(np.float64).mean()
        out[:, j] = (fc - f0) / np.maximum(f0, frac * scale)
        out[~np.isfinite(fc), j] = np.nan
    return out


@pytest.mark.parametrize("method", ["maximin", "percentile", "prctile", "none"])
def test_compute_dff_matches_reference(rng, method):
    F, Fneu = positive_traces(rng, T=300, R=5)
    F[40:55, 2] = np.nan
    F[0:3, 3] = np.nan
    Fneu[100, 4] = np.nan
    out = compute_dff(
        recording(F, Fneu, coefficient=0.5),
        baseline=method,
        win_baseline=4.0,
        sig_baseline=3.0,
        prctile_baseline=20.0,
    )
    want = reference_dff(F, Fneu, 0.5, method, 40, sigma=3.0, p=20.0)
    got = out["dff"].values
    assert out["dff"].dims == ("time", "roi") and got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_nan_samples_stay_nan_and_do_not_spread(rng):
    F, Fneu = positive_traces(rng, T=1000, R=3)
    F[500, 0] = np.nan
    F[:, 2] = np.nan
    out = compute_dff(recording(F, Fneu, coefficient=0.7), win_baseline=10.0)
    dff = out["dff"].values
    assert np.isnan(dff[500, 0]) and np.isfinite(np.delete(dff[:, 0], 500)).all()
    assert np.isfinite(dff[:, 1]).all()
    assert np.isnan(dff[:, 2]).all() and out["dff_guarded"].values[2] == 0
    # the gap is filled by interpolating Fc before filtering: same as a trace without it
    Fc = F[:, 0] - np.float32(0.7) * Fneu[:, 0]
    F_clean = F.copy()
    F_clean[500, 0] = (Fc[499] + Fc[501]) / 2 + np.float32(0.7) * Fneu[500, 0]
    clean = compute_dff(recording(F_clean, Fneu, coefficient=0.7), win_baseline=10.0)
    np.testing.assert_allclose(
        np.delete(dff[:, 0], 500), np.delete(clean["dff"].values[:, 0], 500), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("method", ["maximin", "percentile", "prctile", "none"])
@pytest.mark.parametrize("chunks", [(50, 2), (-1, 3), (333, -1)])
def test_dask_path_equals_numpy_path_exactly(rng, monkeypatch, method, chunks):
    monkeypatch.setattr(npy, "CHUNK_BYTES", 4 * 400 * 2)  # blocks of 2 ROIs
    F, Fneu = positive_traces(rng, T=400, R=7)
    F[10:30, 1] = np.nan
    eager = compute_dff(recording(F, Fneu, coefficient=0.7), baseline=method, win_baseline=5.0)
    lazy = compute_dff(
        recording(F, Fneu, coefficient=0.7, chunks=chunks), baseline=method, win_baseline=5.0
    )
    assert isinstance(lazy["dff"].data, da.Array) and isinstance(lazy["dff_guarded"].data, da.Array)
    assert len(lazy["dff"].chunks[1]) > 1
    np.testing.assert_array_equal(lazy["dff"].values, eager["dff"].values)
    np.testing.assert_array_equal(lazy["dff_guarded"].values, eager["dff_guarded"].values)


def test_compute_dff_is_lazy_and_blocks_bound_memory(rng, monkeypatch):
    T, R = 500, 40
    monkeypatch.setattr(npy, "CHUNK_BYTES", 4 * T * 6)  # 6 ROIs per block

    def explode(block):
        raise AssertionError("computed while building the graph")

    zeros = da.zeros((T, R), chunks=(100, R), dtype=np.float32)
    F = da.map_blocks(explode, zeros, dtype=np.float32, meta=np.empty((0, 0), np.float32))
    ds = new_recording(
        {"F": (("time", "roi"), F)},
        time=frame_times(T, 10.0),
        fs=10.0,
        source_format="test",
        source_name="lazy",
        attrs={},
    )
    out = compute_dff(ds, win_baseline=5.0)  # must not compute anything
    chunks = out["dff"].chunks
    assert chunks[0] == (T,) and max(chunks[1]) == 6
    ok = recording(rng.normal(100, 1, (T, R)).astype(np.float32), chunks=(100, R))
    with dask.config.set(scheduler="synchronous"):
        assert compute_dff(ok, win_baseline=5.0)["dff"].chunks[1] == (6,) * 6 + (4,)


def test_roi_major_layout_gives_the_same_result(rng):
    # Suite2p's F.npy is (roi, time): the Recording then holds a transposed view
    F, Fneu = positive_traces(rng, T=300, R=40)
    F[5, 3] = np.nan
    want = compute_dff(recording(F, Fneu, coefficient=0.7), win_baseline=5.0)["dff"].values
    F_rm, Fneu_rm = np.ascontiguousarray(F.T).T, np.ascontiguousarray(Fneu.T).T
    got = compute_dff(recording(F_rm, Fneu_rm, coefficient=0.7), win_baseline=5.0)
    np.testing.assert_array_equal(got["dff"].values, want)


def test_existing_all_frame_roi_chunks_are_kept(rng):
    F, Fneu = positive_traces(rng, T=200, R=10)
    out = compute_dff(recording(F, Fneu, coefficient=0.7, chunks=(-1, 4)), win_baseline=5.0)
    assert out["dff"].chunks == ((200,), (4, 4, 2))


def test_attrs_record_method_and_parameters(rng):
    F, Fneu = positive_traces(rng, T=200, R=2)
    ds = recording(F, Fneu, coefficient=0.6, fs=5.0)
    out = compute_dff(
        ds, baseline="percentile", neuropil=0.8, win_baseline=8.0, prctile_baseline=10.0
    )
    assert out.attrs["dff_method"] == "percentile"
    assert out.attrs["neuropil_coefficient"] == 0.8
    params = json.loads(out.attrs["dff_params"])
    assert params["neuropil_coefficient"] == 0.8 and params["win_frames"] == 40
    assert params["prctile_baseline"] == 10.0 and params["guard_fraction"] == 0.01
    assert params["boundary"] == "reflect" and "guard_scale" in params
    assert ds.attrs["neuropil_coefficient"] == 0.6 and "dff" not in ds  # input untouched
    assert out.attrs["source_name"] == "rec.npy"


def test_neuropil_coefficient_sources(rng, caplog):
    F, Fneu = positive_traces(rng, T=100, R=2)
    attr = compute_dff(recording(F, Fneu, coefficient=0.3), baseline="none")
    np.testing.assert_array_equal(attr["dff"].values, F - np.float32(0.3) * Fneu)
    zero = compute_dff(recording(F, Fneu, coefficient=0.3), baseline="none", neuropil=0.0)
    np.testing.assert_array_equal(zero["dff"].values, F)
    no_fneu = compute_dff(recording(F, coefficient=0.3), baseline="none")
    assert no_fneu.attrs["neuropil_coefficient"] == 0.0
    np.testing.assert_array_equal(no_fneu["dff"].values, F)
    with caplog.at_level(logging.WARNING, logger="cst_neuro.preprocess"):
        default = compute_dff(recording(F, Fneu), baseline="none")
    assert default.attrs["neuropil_coefficient"] == 0.7 and "default 0.7" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline": "median"}, "setting baseline = 'median' must be one of maximin, "),
        ({"win_baseline": 0.0}, "setting win_baseline = 0.0 must be > 0"),
        ({"win_baseline": -3.0}, "setting win_baseline = -3.0 must be > 0"),
        ({"win_baseline": "60"}, "setting win_baseline = '60' must be a number"),
        ({"win_baseline": 0.05}, "shorter than one frame"),
        ({"baseline": "percentile", "prctile_baseline": 101.0}, "prctile_baseline = 101.0 must"),
        ({"baseline": "prctile", "prctile_baseline": -1.0}, "prctile_baseline = -1.0 must be >="),
        ({"sig_baseline": -1.0}, "sig_baseline"),
        ({"sig_baseline": float("inf")}, "sig_baseline = inf must be a finite number"),
        ({"neuropil": -0.5}, "setting neuropil = -0.5 must be >= 0"),
        ({"guard_fraction": 0.0}, "guard_fraction"),
    ],
)
def test_bad_parameters_raise_input_error(rng, kwargs, message):
    F, Fneu = positive_traces(rng, T=50, R=2)
    with pytest.raises(InputError, match=message) as info:
        compute_dff(recording(F, Fneu, coefficient=0.7, name="session.npy"), **kwargs)
    assert info.value.path == "session.npy"


def test_missing_inputs_raise_input_error(rng):
    F, Fneu = positive_traces(rng, T=50, R=2)
    ds = recording(F, Fneu, coefficient=0.7, name="s2p/plane0")
    with pytest.raises(InputError, match="no raw fluorescence 'F'") as info:
        compute_dff(ds.drop_vars("F").assign(dff=ds["Fneu"]))
    assert str(info.value).startswith("s2p/plane0: ")
    no_fs = ds.copy()
    del no_fs.attrs["fs"]
    with pytest.raises(InputError, match="no sampling rate"):
        compute_dff(no_fs)
    with pytest.raises(InputError, match="has no Fneu"):
        compute_dff(recording(F), neuropil=0.7)


def test_real_suite2p_recording(shared_data):
    from cst_neuro.io import open_recording

    ds = open_recording(shared_data / "suite2p" / "v1_optinist_mouse2p" / "plane0")
    out = compute_dff(ds)
    assert isinstance(out["dff"].data, da.Array)
    dff, F, Fneu = out["dff"].values, ds["F"].values, ds["Fneu"].values
    np.testing.assert_array_equal(np.isfinite(dff), np.isfinite(F) & np.isfinite(Fneu))
    np.testing.assert_array_equal(compute_dff(ds.compute())["dff"].values, dff)
    # Suite2p's own calls (scipy, float64) give the same baseline
    r = float(ds.attrs["neuropil_coefficient"])
    Fc = (F - np.float32(r) * Fneu).T.astype(np.float64)
    win = int(60.0 * ds.attrs["fs"])
    flow = ndimage.gaussian_filter(Fc, [0.0, 10.0])
    flow = ndimage.maximum_filter1d(ndimage.minimum_filter1d(flow, win), win)
    ok = out["dff_guarded"].values == 0
    want = ((Fc - flow) / flow).T
    np.testing.assert_allclose(dff[:, ok], want[:, ok], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("fs", [1e12, 1e308])
def test_an_absurd_rate_is_refused_before_allocating(rng, fs: float) -> None:
    F, Fneu = positive_traces(rng, T=50, R=2)
    ds = recording(F, Fneu, coefficient=0.7, name="session.npy")
    ds.attrs["fs"] = fs
    with pytest.raises(InputError, match=r"session\.npy: the 60 s baseline window at .* GiB"):
        compute_dff(ds)


def test_valid_describes_the_dff_a_model_reads(rng) -> None:
    F, Fneu = positive_traces(rng, T=50, R=3)
    Fneu[7, 1] = np.nan  # F is finite there, but ΔF/F = F - r Fneu is not
    ds = recording(F, Fneu, coefficient=0.7)
    assert ds["valid"].values.all()
    out = compute_dff(ds)
    assert np.isnan(out["dff"].values[7, 1]) and not out["valid"].values[7]
    assert out["valid"].values.sum() == 49
    dead = recording(np.full_like(F, np.nan), Fneu, coefficient=0.7)
    assert not compute_dff(dead)["valid"].values.any()  # nothing to read: nothing valid
