"""Scrubbing sessions (Qt-free): slider times, frames at exact times, traces, exports, and
the calcium prior bound zero-shot."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.errors import InputError, OutputError
from cst_neuro.fit_config import FitConfig
from cst_neuro.layers import roi_labels
from cst_neuro.reconstruct import Reconstructor
from cst_neuro.scrub import (
    ROLES,
    ScrubSession,
    Selection,
    check_upsample,
    modelled_recording,
    scrub_layers,
)
from cst_neuro.store import open_store
from cst_neuro.train import fit

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_fit_config, simulate_recording):
    """A simulated recording with footprints and a tiny model trained on its ΔF/F."""
    _, ds = simulate_recording(12, 96, fov=(64, 64), seed=4)
    path = tmp_path_factory.mktemp("traces") / "model.pt"
    fit(ds, path, config=tiny_fit_config(), device="cpu")
    return ds, path, ScrubSession.from_checkpoint(path, ds, upsample=K)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_fit_config, simulate_recording):
    """A 23 × 22 movie (5 × 5 patches of 4 × 4 pixels; edge pixels left out) and its model."""
    sim, ds = simulate_recording(4, 64, fov=(23, 22), seed=5)
    ds = ds[["valid", "mean_image"]].assign(movie=(("time", "y", "x"), sim.movie()))
    path = tmp_path_factory.mktemp("grid") / "model.pt"
    fit(ds, path, config=tiny_fit_config(var="movie"), device="cpu")
    return ds, path, ScrubSession.from_checkpoint(path, ds, upsample=K)


def painted(ds, values: np.ndarray) -> np.ndarray:
    """ROI values painted into the footprint labels, NaN elsewhere (an independent render)."""
    labels = roi_labels(ds)
    out = np.full(labels.shape, np.nan, np.float32)
    out[labels > 0] = values[labels[labels > 0] - 1]
    return out


def test_slider_has_k_positions_per_frame(traces) -> None:
    ds, _, session = traces
    times = session.slider_times()
    frame_times = ds["time"].values
    assert times.size == (frame_times.size - 1) * K + 1
    np.testing.assert_allclose(times[::K], frame_times)
    np.testing.assert_allclose(np.diff(times), 1 / (K * ds.attrs["fs"]))


def test_frames_at_a_sub_frame_time_equal_the_model(traces) -> None:
    ds, path, session = traces
    fresh = Reconstructor.from_checkpoint(path, ds)  # a second, independent reconstructor
    t = float(session.slider_times()[4 * K + 1])  # a quarter of a frame after frame 4
    frames = session.frames_at(t)
    expected = painted(ds, fresh.predict([t])[0, :, 0])
    np.testing.assert_allclose(frames.reconstruction, expected, rtol=1e-5, atol=1e-6)
    assert frames.frame == 4
    raw = painted(ds, np.asarray(ds["dff"].values[4], np.float32))
    np.testing.assert_allclose(frames.raw, raw, rtol=1e-6)
    np.testing.assert_allclose(frames.difference, expected - raw, rtol=1e-4, atol=1e-5)
    later = session.frames_at(t + 1 / (K * ds.attrs["fs"]))
    assert not np.allclose(later.reconstruction, frames.reconstruction, equal_nan=True)


def test_a_prior_is_bound_zero_shot_and_leaves_no_file(
    traces, tiny_prior: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``from_prior`` (and ``from_checkpoint`` of a prior) scrub what ``fit`` with
    ``max_epochs=0`` writes, from a temporary folder that is gone once they return."""
    ds, _, _ = traces
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    zero_shot = FitConfig(max_epochs=0, prior=str(tiny_prior))
    model = fit(ds, tmp_path / "zs.pt", config=zero_shot, device="cpu").path
    fresh = Reconstructor.from_checkpoint(model, ds)
    t = 4 / ds.attrs["fs"] + 1 / (K * ds.attrs["fs"])
    expected = painted(ds, fresh.predict([t])[0, :, 0])
    for session in (
        ScrubSession.from_prior(ds, tiny_prior, upsample=K),
        ScrubSession.from_checkpoint(tiny_prior, ds, upsample=K),
    ):
        assert session.prior == str(tiny_prior) and session.blend is not None
        assert session.checkpoint.info["prior"] == "p.pt" and not session.checkpoint.history
        recon = session.frames_at(t).reconstruction
        np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)
    assert list(scratch.iterdir()) == []
    assert traces[2].prior is None and traces[2].blend is None  # a model from a file
    with pytest.raises(InputError, match="prior = none binds nothing"):
        ScrubSession.from_prior(ds, "none")


@settings(max_examples=50, deadline=None)
@given(st.floats(-1.0, 5.0, allow_nan=False))
def test_nearest_frame(traces, t: float) -> None:
    _, _, session = traces
    distance = np.abs(session.frame_times - t)
    assert session.nearest_frame(t) == int(np.flatnonzero(distance == distance.min())[0])


def test_grid_frames_and_pixels(grid) -> None:
    ds, path, session = grid
    assert session.frame_shape == (20, 20)  # whole 4 × 4 patches only
    fresh = Reconstructor.from_checkpoint(path, ds)
    t = float(session.slider_times()[10 * K + 2])
    np.testing.assert_allclose(
        session.frames_at(t).reconstruction, fresh.as_image(fresh.predict([t]))[0], rtol=1e-5
    )
    raw = ds["movie"].values[10, :20, :20]  # frame 10.5 rounds to 10
    np.testing.assert_allclose(session.frames_at(t).raw, raw, rtol=1e-6)
    selection = session.channel_at((6, 9))
    assert (selection.channel, selection.value) == (1 * 5 + 2, 2 * 4 + 1)
    assert session.channel_at((20, 0)) is None


def test_roi_selection_and_background(traces) -> None:
    ds, _, session = traces
    labels = roi_labels(ds)
    y, x = np.argwhere(labels == 3)[0]
    assert session.channel_at((int(y), int(x))) == Selection(2, 0, f"ROI {ds['roi'].values[2]}")
    y, x = np.argwhere(labels == 0)[0]
    assert session.channel_at((int(y), int(x))) is None
    assert session.channel_at((-1, 0)) is None
    with pytest.raises(InputError, match="no ROI at position 12"):
        session.roi_selection(12)


def test_trace_samples_reconstruction_and_baselines(traces) -> None:
    ds, path, session = traces
    fresh = Reconstructor.from_checkpoint(path, ds)
    trace = session.trace(session.roi_selection(5), around=1.5, n_frames=20)
    frames = np.arange(35, 56)  # 1.5 s at 30 Hz is frame 45: 10 either side
    np.testing.assert_allclose(trace.observed_times, ds["time"].values[frames])
    np.testing.assert_allclose(trace.observed_values, ds["dff"].values[frames, 5], rtol=1e-6)
    np.testing.assert_array_equal(trace.held_out, session.held_out[frames])
    assert session.held_out.any()  # the model's validation frames are known
    assert trace.times.size == 20 * 8 + 1
    np.testing.assert_allclose(
        trace.values, fresh.predict(trace.times, np.array([5]))[:, 0, 0], rtol=1e-5, atol=1e-6
    )
    train = ~trace.held_out
    obs_t, obs_v = trace.observed_times[train], trace.observed_values[train]
    linear = np.interp(trace.times, obs_t, obs_v, left=np.nan, right=np.nan)  # no extrapolation
    np.testing.assert_allclose(trace.baselines["linear"], linear, rtol=1e-6)
    at_frames = trace.baselines["PCHIP"][::8]  # 8 dense points per frame
    np.testing.assert_allclose(at_frames[train], obs_v, rtol=1e-5, atol=1e-7)


def test_scrub_layers_share_one_buffer_per_role(traces) -> None:
    ds, _, session = traces
    layers, buffers = scrub_layers(session)
    assert [layer[1]["metadata"]["cst_scrub"] for layer in layers] == list(ROLES)
    n_times = session.slider_times().size
    for (data, kwargs, kind), role in zip(layers, ROLES, strict=True):
        assert kind == "image" and data.shape == (n_times, 64, 64)
        assert kwargs["scale"][0] == pytest.approx(1 / (K * ds.attrs["fs"]))
        assert kwargs["axis_labels"] == ("time", "y", "x")
        buffers[role][5, 7] = 2.5
        assert data[0, 5, 7] == data[n_times - 1, 5, 7] == 2.5
    shifts = [layer[1]["translate"][-1] for layer in layers]
    assert shifts[0] == 0 and shifts[1] > 64 and shifts[2] > shifts[1] + 64


def test_set_upsample(traces) -> None:
    _, _, session = traces
    try:
        session.set_upsample(2)
        assert session.slider_times().size == (session.frame_times.size - 1) * 2 + 1
    finally:
        session.set_upsample(K)
    for bad in (0, 1.5, True, "4"):
        with pytest.raises(InputError, match="whole number >= 1"):
            check_upsample(bad)


def test_export_movie(traces, tmp_path: Path) -> None:
    ds, _, session = traces
    path = session.export_movie(tmp_path / "movie.tif", 0.5, 0.6)
    times = session.slider_times()
    times = times[(times >= 0.5 - 1e-9) & (times <= 0.6 + 1e-9)]
    with tifffile.TiffFile(path) as tif:
        movie = tif.asarray()
        assert tif.imagej_metadata["finterval"] == pytest.approx(1 / (K * ds.attrs["fs"]))
    assert movie.shape == (times.size, 3, 64, 64)
    frames = session.frames_at(times[1])
    for c, role in enumerate(ROLES):
        np.testing.assert_allclose(movie[1, c], frames.image(role), rtol=1e-5, atol=1e-6)
    with pytest.raises(OutputError, match="already exists"):
        session.export_movie(path, 0.5, 0.6)
    with pytest.raises(InputError, match="no slider time"):
        session.export_movie(tmp_path / "none.tif", 50, 60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.tif"]  # no partial files
    session.export_movie(path, 0.5, 0.55, overwrite=True)  # its own earlier export: replaced
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((3, 8, 8), np.uint16))  # a user's movie
    with pytest.raises(OutputError, match="not a movie exported by cst-neuro; not replacing"):
        session.export_movie(tmp_path / "raw.tif", 0.5, 0.6, overwrite=True)
    assert tifffile.imread(tmp_path / "raw.tif").shape == (3, 8, 8)


def test_held_out_frames_of_other_data_are_not_marked_and_say_so(
    traces, caplog: pytest.LogCaptureFixture
) -> None:
    ds, path, session = traces
    assert session.held_out.any()  # the very data it trained on: validation frames marked
    other = ds.copy()
    other["dff"] = ds["dff"] * 2
    with caplog.at_level("WARNING", logger="cst_neuro.scrub"):
        moved = ScrubSession.from_checkpoint(path, other, upsample=K)
    assert not moved.held_out.any()
    assert "trained on different data than this recording" in caplog.text


def test_export_reconstruction(traces, tmp_path: Path) -> None:
    ds, path, session = traces
    store = session.export_reconstruction(tmp_path / "rec.zarr")
    out = open_store(store)
    assert out.sizes["time"] == session.slider_times().size
    assert out.attrs["upsample"] == K
    fresh = Reconstructor.from_checkpoint(path, ds)
    some = np.array([0, 7, 101])
    np.testing.assert_allclose(
        out["dff"].values[some], fresh.predict(out["time"].values[some])[:, :, 0], rtol=1e-5
    )
    with pytest.raises(OutputError, match="already exists"):
        session.export_reconstruction(store)


def test_modelled_recording_adds_dff_to_real_suite2p(shared_data) -> None:
    from cst_neuro.layers import open_for_viewing

    ds = open_for_viewing(shared_data / "suite2p" / "v1_optinist_mouse2p")
    assert "dff" not in ds
    out = modelled_recording(ds)
    assert out["dff"].shape == ds["F"].shape and out["dff"].chunks is None  # in memory
    assert np.isfinite(out["dff"].values).all()
    assert modelled_recording(out) is out
