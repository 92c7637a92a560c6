"""Queries at real-valued times: caching, independence, output times, the CLI contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from cst_neuro._cli.app import app
from cst_neuro.errors import InputError
from cst_neuro.preprocess import compute_dff
from cst_neuro.reconstruct import Reconstructor, output_times, reconstruct
from cst_neuro.simulate import SimulationConfig, simulate
from cst_neuro.store import open_store, write_recording
from cst_neuro.train import FitConfig, fit

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "n_fourier": 8}
CONFIG = dict(
    window=16, batch_size=2, steps_per_epoch=2, max_epochs=1, n_collocation=8, prior="none"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("rec")
    sim = simulate(SimulationConfig(n_rois=5, n_frames=200, fs=20.0, seed=4))
    store = write_recording(compute_dff(sim.recording()), folder / "rec.zarr")
    ds = open_store(store)
    fit(ds, folder / "m.pt", config=FitConfig(**CONFIG, model=TINY))
    return folder, store, ds


def test_a_prediction_does_not_depend_on_other_queries(trained) -> None:
    folder, _, ds = trained
    rec = Reconstructor.from_checkpoint(folder / "m.pt", ds)
    alone = rec.predict(np.array([2.013]))
    together = rec.predict(np.array([0.4, 2.013, 2.0171, 7.3]))
    np.testing.assert_allclose(together[1], alone[0], rtol=1e-5, atol=1e-6)
    fresh = Reconstructor.from_checkpoint(folder / "m.pt", ds).predict(np.array([2.013]))
    np.testing.assert_allclose(fresh, alone, rtol=1e-6, atol=1e-7)  # the cache changes nothing


def test_sub_frame_times_reuse_the_encoded_window(trained, monkeypatch) -> None:
    folder, _, ds = trained
    rec = Reconstructor.from_checkpoint(folder / "m.pt", ds)
    calls = []
    encode = rec.model.encode
    monkeypatch.setattr(rec.model, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    for k in range(8):  # eight positions between two frames: the two windows holding them
        rec.predict(np.array([3.0 + k / 160]))
    assert len(calls) == 2


def test_reconstruction_is_continuous_across_frames_and_windows(trained) -> None:
    """Blended windows: no jump where the frame, or the windows holding a time, change."""
    folder, _, ds = trained
    rec = Reconstructor.from_checkpoint(folder / "m.pt", ds)
    frames = np.arange(ds.sizes["time"] - 1, dtype=np.float64)
    t = lambda f: ds["time"].values[0] + f / ds.attrs["fs"]  # noqa: E731
    jumps = np.abs(rec.predict(t(frames + 1e-4)) - rec.predict(t(frames - 1e-4)))
    steps = np.abs(np.diff(rec.predict(t(frames + 0.5)), axis=0))
    assert jumps.max() < 0.02 * np.median(steps)
    weights = rec.window_weights(np.linspace(-3.0, ds.sizes["time"] + 3.0, 997))
    total = np.zeros(997)
    for _, rows, weight in weights:
        total[rows] += weight
        assert np.all(weight > 0)
    assert np.all(total > 0.5)


def _grid_recording(rng: np.random.Generator) -> xr.Dataset:
    """60 frames of a 10 × 13 grid: 2 × 3 patches of 4, edge pixels trimmed."""
    from cst_neuro.schema import new_recording

    grid = rng.normal(size=(60, 10, 13)).astype(np.float32)
    return new_recording(
        {"grid": (("time", "y", "x"), grid)},
        time=np.arange(60) / 10.0,
        fs=10.0,
        source_format="test",
        source_name="g",
        coords={"y": np.arange(10.0), "x": np.arange(13.0)},
    )


@pytest.mark.parametrize("case", ["traces", "grid", "no latents"])
def test_inference_gives_the_training_paths_predictions(
    trained, case: str, tmp_path: Path, rng, monkeypatch
) -> None:
    """Reconstruction decodes queries grouped by channel (`CST.decode` without gradients);
    the same predictions through the jet path that training uses agree to 1e-5."""
    folder, _, ds = trained
    path = folder / "m.pt"
    if case != "traces":
        ds = _grid_recording(rng) if case == "grid" else ds
        model = TINY if case == "grid" else {**TINY, "n_latent_times": 0}
        path = tmp_path / "m.pt"
        fit(ds, path, config=FitConfig(**CONFIG, model=model))
    rec = Reconstructor.from_checkpoint(path, ds)
    times = np.linspace(-0.3, float(ds["time"].values[-1]) + 0.2, 37)
    fast = rec.predict(times)
    decode = rec.model.decode

    def jet_path(*args, **kwargs):  # decode takes the jet path when gradients are on
        with torch.enable_grad():
            return decode(*args, **kwargs).detach()

    monkeypatch.setattr(rec.model, "decode", jet_path)
    reference = rec.predict(times)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5 * scale)


def test_reconstruct_counts_its_values_on_a_bar(trained, tmp_path: Path, capsys) -> None:
    folder, _, ds = trained
    rec = Reconstructor.from_checkpoint(folder / "m.pt", ds)
    write_recording(reconstruct(rec, ds, upsample=2, progress=True), tmp_path / "up.zarr")
    err = capsys.readouterr().err
    n = (2 * ds.sizes["time"] - 1) * ds.sizes["roi"]
    assert "reconstruct: 100%" in err and f"/{n / 1e3:.2f}k [" in err and "<00:00" in err


def test_upsampled_reconstruction(trained, tmp_path: Path) -> None:
    folder, _, ds = trained
    rec = Reconstructor.from_checkpoint(folder / "m.pt", ds)
    out = reconstruct(rec, ds, upsample=4)
    t = out["time"].values
    np.testing.assert_allclose(t, ds["time"].values[0] + np.arange(t.size) / 80.0)
    assert t.size == (ds.sizes["time"] - 1) * 4 + 1 and out.attrs["fs"] == 80.0
    assert out["dff"].dims == ("time", "roi") and out.sizes["roi"] == ds.sizes["roi"]
    write_recording(out, tmp_path / "up.zarr")
    back = open_store(tmp_path / "up.zarr")
    np.testing.assert_allclose(
        back["dff"].values[::4][:10], rec.predict(t[::4][:10])[..., 0], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of"),
        ({"upsample": 2, "times": np.arange(3.0)}, "exactly one of"),
        ({"upsample": 0}, "whole number >= 1"),
        ({"times": np.array([1.0, 0.5])}, "strictly increasing"),
        ({"times": np.array([1.0, np.nan])}, "finite"),
    ],
)
def test_bad_output_times(trained, kwargs, message: str) -> None:
    with pytest.raises(InputError, match=message):
        output_times(trained[2], **kwargs)


runner = CliRunner()


def test_cli_fit_and_reconstruct(trained, tmp_path: Path) -> None:
    _, store, _ = trained
    config = tmp_path / "tiny.toml"
    config.write_text(
        "window = 16\nbatch_size = 2\nsteps_per_epoch = 2\nn_collocation = 8\nprior = 'none'\n"
        "[model]\nd_model = 16\nn_heads = 2\nn_layers = 1\nd_ff = 32\nn_fourier = 8\n"
    )
    model = tmp_path / "m.pt"
    result = runner.invoke(
        app, ["fit", str(store), "-o", str(model), "--config", str(config), "--max-epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "1 epochs from prior none, stopped by max-epochs" in result.stdout
    again = runner.invoke(app, ["fit", str(store), "-o", str(model), "--max-epochs", "1"])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.stderr
    times = tmp_path / "t.npy"
    np.save(times, np.array([0.51, 0.525, 3.3]))
    out = tmp_path / "r.zarr"
    result = runner.invoke(
        app, ["reconstruct", str(model), str(store), "-o", str(out), "--times", str(times)]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(open_store(out)["time"].values, [0.51, 0.525, 3.3])


def test_cli_reconstruct_bad_input(trained, tmp_path: Path) -> None:
    folder, store, _ = trained
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cases = [
        (
            [
                "reconstruct",
                str(bad),
                str(store),
                "-o",
                str(tmp_path / "o.zarr"),
                "--upsample",
                "2",
            ],
            "bad.pt: not a loadable cst-neuro checkpoint",
        ),
        (
            ["reconstruct", str(folder / "m.pt"), str(store), "-o", str(tmp_path / "o.zarr")],
            "give exactly one of --upsample K or --times FILE.npy",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert "Traceback" not in result.output


def test_reconstruction_names_its_source(trained) -> None:
    folder, _, ds = trained
    out = reconstruct(Reconstructor.from_checkpoint(folder / "m.pt", ds), ds, upsample=2)
    assert out.attrs["source_format"] == "cst-reconstruction"
    assert out.attrs["source_name"] == f"{ds.attrs['source_name']} (reconstruction)"
    assert out.attrs["reconstruction_of"] == ds.attrs["source_name"]
    at_times = reconstruct(
        Reconstructor.from_checkpoint(folder / "m.pt", ds), ds, times=np.array([1.0, 1.5, 3.0])
    )
    assert at_times.attrs["fs"] == 1.0  # two intervals over two seconds


def test_grid_reconstruction_inverts_the_patch_view(tmp_path: Path, rng) -> None:
    from cst_neuro.data import channel_view

    ds = _grid_recording(rng)
    grid = ds["grid"].values
    fit(ds, tmp_path / "g.pt", config=FitConfig(**CONFIG, model=TINY))
    rec = Reconstructor.from_checkpoint(tmp_path / "g.pt", ds)
    patches = channel_view(ds, "grid", patch=4).values  # (T, 6, 16)
    np.testing.assert_array_equal(rec.as_image(patches), grid[:, :8, :12])
    out = reconstruct(rec, ds, upsample=2)
    assert out["grid"].dims == ("time", "y", "x") and out["grid"].shape == (119, 8, 12)
    np.testing.assert_array_equal(out["y"].values, np.arange(8.0))


def test_predictions_from_several_threads_match_one_thread(trained) -> None:
    """reconstruct() computes its blocks on dask's threads, all through one Reconstructor."""
    from concurrent.futures import ThreadPoolExecutor

    folder, _, ds = trained
    times = [np.array([0.3 + 0.37 * i, 5.1 - 0.21 * i]) for i in range(12)]
    alone = [Reconstructor.from_checkpoint(folder / "m.pt", ds).predict(t) for t in times]
    shared = Reconstructor.from_checkpoint(folder / "m.pt", ds, cache_size=2)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(shared.predict, times))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
