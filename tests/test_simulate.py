"""The simulator: exact continuous-time truth, plausible observations, Suite2p/TIFF writers."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.errors import InputError, OutputError
from cst_neuro.io.safe_pickle import load_npy_object
from cst_neuro.schema import validate_recording
from cst_neuro.simulate import (
    INDICATORS,
    Indicator,
    SimulatedRecording,
    SimulationConfig,
    simulate,
    write_simulation,
    write_suite2p,
    write_tiff,
)

SMALL = SimulationConfig(n_rois=24, n_frames=400, fs=20.0, fov=(64, 64), seed=7, chunk_frames=64)


@functools.cache
def small(**changes) -> SimulatedRecording:
    """A small cached simulation (chunk boundaries every 64 frames)."""
    return simulate(SMALL.replace(**changes))


def brute_force_dff(sim: SimulatedRecording, times: np.ndarray, roi: int) -> np.ndarray:
    """Clean ΔF/F by summing the analytic kernel over every spike (including warm-up)."""
    ind = sim.indicator
    spikes = sim.spike_times(roi, warmup=True)
    lag = np.asarray(times)[:, None] - spikes[None, :]
    safe = np.where(lag > 0, lag, 0.0)
    kernel = np.where(lag > 0, np.exp(-safe / ind.tau_decay) - np.exp(-safe / ind.tau_rise), 0.0)
    x = sim.amplitude[roi] * kernel.sum(axis=1) / ind.peak
    if ind.saturation is not None:
        x = x / (1 + x / ind.saturation)
    return x


# ---- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_rois", 0),
        ("n_frames", -5),
        ("n_frames", 2.5),
        ("fs", 0.0),
        ("fs", float("nan")),
        ("n_planes", 0),
        ("fov", (8, 64)),
        ("fov", "big"),
        ("seed", -1),
        ("rate_hz", -1.0),
        ("shot_noise", -0.1),
        ("cell_fraction", 1.5),
        ("indicator", "GCaMP99"),
        ("soma_radius", 80.0),
        ("chunk_frames", 0),
        ("wave_amplitude", 50.0),
        ("baseline_drift", 0.7),
        ("cell_fraction", "most"),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(InputError, match=field if field != "indicator" else "indicator"):
        SimulationConfig(**{field: value})


def test_config_rejects_more_planes_than_rois():
    with pytest.raises(ValueError, match="n_planes"):
        SimulationConfig(n_rois=2, n_planes=3)


def test_indicator_validation_and_presets():
    with pytest.raises(InputError, match="tau_rise"):
        Indicator("bad", tau_rise=0.5, tau_decay=0.1, amplitude=0.1)
    assert {"gcamp6f", "gcamp6s", "jgcamp8f", "ogb-1"} <= set(INDICATORS)
    for ind in INDICATORS.values():
        t = ind.peak_time
        h = np.exp(-t / ind.tau_decay) - np.exp(-t / ind.tau_rise)
        assert h == pytest.approx(ind.peak)
    assert INDICATORS["jgcamp8f"].peak_time < INDICATORS["gcamp6s"].peak_time
    assert SimulationConfig(indicator="gcamp6s").kernel.name == "GCaMP6s"


def test_config_accepts_numpy_numbers():
    cfg = SimulationConfig(n_rois=np.int64(10), fs=np.float32(7.5), seed=np.uint8(3))
    assert type(cfg.n_rois) is int and type(cfg.fs) is float
    assert SimulationConfig.from_json(cfg.to_json()) == cfg


def test_config_json_round_trip():
    cfg = SMALL.replace(indicator=Indicator("x", tau_rise=0.01, tau_decay=0.2, amplitude=0.3))
    assert SimulationConfig.from_json(cfg.to_json()) == cfg


# ---- exact truth ---------------------------------------------------------------------------


def test_clean_dff_at_frames_matches_brute_force_across_chunks():
    sim = small()
    frames = sim.clean_dff_frames()
    assert frames.shape == (sim.n_frames, sim.n_rois)
    assert frames.max() > 0.05  # there is activity to check
    for r in (0, 5, 23):
        expect = brute_force_dff(sim, sim.time + sim.roi_time_offset[r], r)
        np.testing.assert_allclose(frames[:, r], expect, rtol=1e-9, atol=1e-12)


def test_clean_dff_query_equals_recurrence_at_frame_times():
    sim = small()
    np.testing.assert_allclose(sim.clean_dff(sim.time), sim.clean_dff_frames(), atol=1e-12)
    part = sim.clean_dff_frames(70, 200)
    np.testing.assert_array_equal(part, sim.clean_dff_frames()[70:200])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, SMALL.n_frames / SMALL.fs), min_size=1, max_size=30))
def test_clean_dff_matches_analytic_kernel_at_any_time(times):
    sim = small()
    t = np.asarray(times)
    got = sim.clean_dff(t, roi=[3, 11])
    for j, r in enumerate((3, 11)):
        np.testing.assert_allclose(got[:, j], brute_force_dff(sim, t, r), rtol=1e-9, atol=1e-12)


def test_clean_dff_is_continuous_at_sub_frame_resolution():
    sim = small()
    t = np.arange(0.0, 3.0, 1e-5)
    x = sim.clean_dff(t, roi=np.arange(6))
    ind = sim.indicator
    max_slope = sim.amplitude.max() * (1 / ind.tau_rise) / ind.peak * 10  # generous bound
    assert np.abs(np.diff(x, axis=0)).max() < max_slope * 1e-5
    assert np.ptp(x) > 0.01


def test_saturating_indicator_stays_below_its_ceiling():
    ind = Indicator("sat", tau_rise=0.02, tau_decay=0.5, amplitude=0.5, saturation=0.8)
    sim = small(indicator=ind, rate_hz=5.0)
    d = sim.clean_dff_frames()
    assert d.max() < 0.8
    np.testing.assert_allclose(d[:, 2], brute_force_dff(sim, sim.time, 2), rtol=1e-9, atol=1e-12)


def test_plane_offsets_are_honoured():
    sim = small(n_planes=3)
    fs = sim.fs
    np.testing.assert_allclose(np.unique(sim.roi_time_offset), np.arange(3) / (3 * fs))
    frames = sim.clean_dff_frames()
    shifted = sim.time[:, None] + sim.roi_time_offset[None, :]
    for r in np.flatnonzero(sim.roi_plane == 2)[:3]:
        np.testing.assert_allclose(frames[:, r], sim.clean_dff(shifted[:, r], roi=r)[:, 0])
        assert not np.allclose(frames[:, r], sim.clean_dff(sim.time, roi=r)[:, 0])
    ds = sim.recording()
    np.testing.assert_array_equal(ds["roi_time_offset"].values, sim.roi_time_offset)
    assert ds["roi_plane"].dtype == np.int16


def test_bad_queries_are_rejected():
    sim = small()
    with pytest.raises(InputError, match="within"):
        sim.clean_dff([sim.config.duration + 1.0])
    with pytest.raises(InputError, match="within"):
        sim.clean_dff([np.nan])
    with pytest.raises(InputError, match="roi"):
        sim.clean_dff([1.0], roi=99)
    with pytest.raises(InputError, match="frames"):
        sim.traces(0, sim.n_frames + 1)


# ---- determinism ---------------------------------------------------------------------------


def test_same_seed_is_bit_identical_and_seeds_differ():
    a = simulate(SMALL).recording()
    b = simulate(SMALL).recording()
    for name in ("F", "Fneu", "spks", "footprint_weight", "mean_image"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    c = simulate(SMALL.replace(seed=8)).recording()
    assert not np.array_equal(a["F"].values, c["F"].values)


def test_longer_recording_starts_with_the_same_frames():
    short = small().traces()
    longer = simulate(SMALL.replace(n_frames=600)).traces(0, SMALL.n_frames)
    for name in ("dff", "F", "Fneu", "spks"):
        np.testing.assert_array_equal(short[name], longer[name])


# ---- plausible statistics ------------------------------------------------------------------


def test_fluorescence_positive_and_noise_as_configured():
    cfg = SMALL.replace(n_frames=1000, shot_noise=1.5, read_noise=4.0)
    noisy = simulate(cfg).traces()
    clean = simulate(cfg.replace(shot_noise=0.0, read_noise=0.0)).traces()
    assert (noisy["F"] > 0).all() and (noisy["Fneu"] > 0).all()
    resid = noisy["F"].astype(np.float64) - clean["F"]
    z = resid / np.sqrt(1.5 * clean["F"] + 16.0)
    assert z.std() == pytest.approx(1.0, abs=0.03)
    assert abs(z.mean()) < 0.02
    zn = (noisy["Fneu"] - clean["Fneu"]) / np.sqrt(1.5 * clean["Fneu"] + 16.0)
    assert zn.std() == pytest.approx(cfg.neuropil_noise, rel=0.05)
    np.testing.assert_array_equal(noisy["dff"], clean["dff"])


def test_spike_rate_close_to_configured():
    sim = simulate(SMALL.replace(n_rois=150, n_frames=6000, rate_hz=2.0, drift_amplitude=0.0))
    counts = np.array([s.size for s in sim.spike_times()])
    rates = counts / sim.config.duration
    assert rates.mean() == pytest.approx(sim.latent.nu.mean(), rel=0.08)
    assert rates.mean() == pytest.approx(2.0, rel=0.15)
    assert np.corrcoef(rates, sim.latent.nu)[0, 1] > 0.9
    spks = sim.traces()["spks"]
    assert (spks >= 0).all()
    assert ((spks > 0).sum(axis=0) <= counts + 1).all()


def test_nearby_rois_correlate_more_than_distant_ones():
    sim = simulate(SMALL.replace(n_rois=80, n_frames=3000, fov=(256, 256), rate_hz=3.0))
    corr = np.corrcoef(sim.clean_dff_frames().T)
    pos = sim.footprints.centre
    dist = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    iu = np.triu_indices(sim.n_rois, 1)
    near = corr[iu][dist[iu] < 50].mean()
    far = corr[iu][dist[iu] > 150].mean()
    assert near > far + 0.05


# ---- the Recording ---------------------------------------------------------------------------


def test_recording_follows_the_schema():
    sim = small()
    ds = sim.recording()
    validate_recording(ds)
    assert ds.attrs["source_format"] == "simulated"
    assert ds.attrs["fs"] == sim.fs
    assert ds.attrs["neuropil_coefficient"] == sim.config.neuropil_coefficient
    assert SimulationConfig.from_json(ds.attrs["simulation_config"]) == sim.config
    assert ds["F"].dims == ("time", "roi") and ds["F"].dtype == np.float32
    assert ds.sizes["time"] == sim.n_frames and ds.sizes["roi"] == sim.n_rois
    sums = np.bincount(ds["footprint_roi"].values, ds["footprint_weight"].values)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
    ly, lx = sim.config.fov
    assert np.all((ds["roi_y"].values >= 0) & (ds["roi_y"].values <= ly - 1))
    assert np.all((ds["roi_x"].values >= 0) & (ds["roi_x"].values <= lx - 1))
    np.testing.assert_array_equal(ds["iscell"].values, ds["cell_prob"].values > 0.5)
    assert ds["mean_image"].dims == ("y", "x")
    assert bool(ds["valid"].all())


def test_multiplane_recording_has_a_mean_image_per_plane():
    ds = small(n_planes=2).recording()
    assert ds["mean_image"].dims == ("plane", "y", "x")
    assert ds.attrs["nplanes"] == 2


# ---- Suite2p writers -----------------------------------------------------------------------


def _keys(d: dict) -> dict:
    return {k: _keys(v) if isinstance(v, dict) else None for k, v in d.items()}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    sim = small()
    return sim, {
        "v0": write_suite2p(sim, root / "v0", layout="v0", data_bin=True),
        "v1": write_suite2p(sim, root / "v1", layout="v1"),
    }


@pytest.mark.parametrize("layout", ["v0", "v1"])
def test_written_arrays_load_back_to_the_same_numbers(written, layout):
    sim, folders = written
    ds = sim.recording()
    plane = folders[layout] / "plane0"
    for name in ("F", "Fneu", "spks"):
        arr = np.load(plane / f"{name}.npy")
        assert arr.dtype == np.float32 and arr.shape == (sim.n_rois, sim.n_frames)
        np.testing.assert_array_equal(arr, ds[name].values.T)
    iscell = np.load(plane / "iscell.npy")
    assert iscell.shape == (sim.n_rois, 2) and iscell.dtype == np.float64
    np.testing.assert_allclose(iscell[:, 1], sim.cell_prob, rtol=1e-6)
    stat = load_npy_object(plane / "stat.npy")
    fp = sim.footprints
    for r in (0, sim.n_rois - 1):
        np.testing.assert_array_equal(stat[r]["ypix"], fp.y[fp.pixels(r)])
        np.testing.assert_array_equal(stat[r]["xpix"], fp.x[fp.pixels(r)])
        assert stat[r]["lam"].sum() == pytest.approx(1.0, rel=1e-5)
        assert stat[r]["npix"] == stat[r]["ypix"].size
    ops = load_npy_object(plane / "ops.npy")
    assert ops["fs"] == sim.fs and ops["nframes"] == sim.n_frames
    assert (ops["Ly"], ops["Lx"]) == sim.config.fov
    assert ops["meanImg"].shape == sim.config.fov


def test_v0_layout_matches_real_suite2p_keys(written, shared_data):
    _, folders = written
    real = shared_data / "suite2p" / "v0_fissa_rochefort" / "plane0"
    ours = folders["v0"] / "plane0"
    assert {p.name for p in real.glob("*.npy")} <= {p.name for p in ours.glob("*.npy")}
    real_ops, ops = load_npy_object(real / "ops.npy"), load_npy_object(ours / "ops.npy")
    assert set(real_ops) <= set(ops)
    for key in ("fs", "nplanes", "Ly", "Lx", "nframes", "neucoeff", "tau", "baseline"):
        assert isinstance(ops[key], type(real_ops[key]) | float), key
    assert ops["neucoeff"] == 0.7
    real_stat, stat = load_npy_object(real / "stat.npy"), load_npy_object(ours / "stat.npy")
    assert set(stat[0]) == set(real_stat[0])
    for key in ("ypix", "xpix", "lam", "neuropil_mask", "soma_crop", "overlap"):
        assert stat[0][key].dtype == real_stat[0][key].dtype, key
    assert isinstance(stat[0]["med"], list) and len(stat[0]["med"]) == 2


def test_v1_layout_matches_real_suite2p_keys(written, shared_data):
    _, folders = written
    real, ours = shared_data / "suite2p" / "v1_optinist_mouse2p", folders["v1"]
    visible = {p.name for p in ours.iterdir() if not p.name.startswith(".")}
    assert {p.name for p in real.iterdir()} == visible  # and the hidden overwrite marker
    assert (ours / ".cst-neuro-simulation").is_file()
    assert {p.name for p in (real / "plane0").iterdir()} == {
        p.name for p in (ours / "plane0").iterdir()
    }
    for name in ("db.npy", "settings.npy", "plane0/db.npy", "plane0/settings.npy",
                 "plane0/reg_outputs.npy", "plane0/detect_outputs.npy"):  # fmt: skip
        assert _keys(load_npy_object(ours / name)) == _keys(load_npy_object(real / name)), name
    assert set(load_npy_object(ours / "plane0/ops.npy")) == set(
        load_npy_object(real / "plane0/ops.npy")
    )
    settings = load_npy_object(ours / "settings.npy")
    assert settings["version"] == "1.1.0"
    assert settings["fs"] == 20.0
    assert settings["extraction"]["neuropil_coefficient"] == 0.7
    real_stat = load_npy_object(real / "plane0" / "stat.npy")
    assert set(load_npy_object(ours / "plane0" / "stat.npy")[0]) == set(real_stat[0])


def test_streaming_writer_equals_in_memory_for_multiple_planes(tmp_path):
    sim = small(n_planes=2)
    ds = sim.recording()
    folder = write_suite2p(sim, tmp_path / "suite2p", layout="v1", data_bin=True)
    assert sorted(p.name for p in folder.glob("plane*")) == ["plane0", "plane1"]
    for p in range(2):
        rois = np.flatnonzero(sim.roi_plane == p)
        np.testing.assert_array_equal(
            np.load(folder / f"plane{p}" / "F.npy"), ds["F"].values[:, rois].T
        )
        ops = load_npy_object(folder / f"plane{p}" / "ops.npy")
        assert ops["iplane"] == p and ops["nplanes"] == 2
        stat = load_npy_object(folder / f"plane{p}" / "stat.npy")
        assert len(stat) == rois.size and all(s["iplane"] == p for s in stat)
    assert load_npy_object(folder / "db.npy")["nplanes"] == 2


def test_data_bin_is_the_int16_movie(written):
    sim, folders = written
    raw = np.fromfile(folders["v0"] / "plane0" / "data.bin", dtype="<i2")
    ly, lx = sim.config.fov
    movie = raw.reshape(sim.n_frames, ly, lx)
    expect = np.clip(np.rint(sim.movie(0, 50)), -32768, 32767)
    np.testing.assert_array_equal(movie[:50], expect)
    ops = load_npy_object(folders["v0"] / "plane0" / "ops.npy")
    assert Path(ops["reg_file"]).name == "data.bin"


def test_writer_refuses_to_overwrite_without_permission(tmp_path):
    sim = small(n_frames=64)
    write_suite2p(sim, tmp_path / "s2p")
    with pytest.raises(OutputError, match="overwrite"):
        write_suite2p(sim, tmp_path / "s2p")
    write_suite2p(sim, tmp_path / "s2p", overwrite=True, layout="v1")
    assert (tmp_path / "s2p" / "settings.npy").exists()
    with pytest.raises(InputError, match="layout"):
        write_suite2p(sim, tmp_path / "other", layout="v2")


# ---- movies and TIFF -------------------------------------------------------------------------


def test_movie_shows_somata_over_background():
    sim = small()
    movie = sim.movie(0, 30)
    assert movie.shape == (30, *sim.config.fov) and movie.dtype == np.float32
    fp = sim.footprints
    centre = movie.mean(axis=0)[np.round(fp.centre[:, 0]).astype(int),
                                np.round(fp.centre[:, 1]).astype(int)]  # fmt: skip
    assert np.median(centre) > np.median(movie)
    np.testing.assert_array_equal(sim.movie(10, 20), movie[10:20])


@pytest.mark.parametrize("n_planes", [1, 2])
def test_tiff_round_trip(tmp_path, n_planes):
    tifffile = pytest.importorskip("tifffile")
    sim = small(n_planes=n_planes, n_frames=40)
    path = write_tiff(sim, tmp_path / "movie.tif")
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        meta = tif.imagej_metadata
    assert meta["finterval"] == pytest.approx(1 / sim.fs)
    expect = np.stack([sim.movie(plane=p) for p in range(n_planes)], axis=1)
    expect = np.clip(np.rint(expect), 0, 65535).astype(np.uint16)
    np.testing.assert_array_equal(data, expect[:, 0] if n_planes == 1 else expect)
    with pytest.raises(OutputError):
        write_tiff(sim, path)


def test_write_simulation_one_call(tmp_path):
    fields = {"n_rois": 12, "n_frames": 50, "fov": (48, 48), "seed": 3}
    folder = write_simulation(tmp_path / "s2p", layout="suite2p-v0", **fields)
    expect = simulate(SimulationConfig(**fields)).recording()
    np.testing.assert_array_equal(np.load(folder / "plane0" / "F.npy"), expect["F"].values.T)
    tif = write_simulation(tmp_path / "m", layout="movie", **fields)
    assert tif == tmp_path / "m" / "movie.tif" and tif.exists()
    with pytest.raises(InputError, match="layout"):
        write_simulation(tmp_path / "x", layout="hdf5", **fields)
