"""Issue 16 in the model code: no hang on data without samples, no NaN or absurd outputs,
no absurd networks, a model from another recording said so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cst_neuro.evaluate.recording import traces_recording
from cst_neuro.store import write_recording

from ._inputs import assert_clean_cli_error, cli


def test_fit_on_a_store_without_finite_samples_ends_with_an_error(tmp_path: Path) -> None:
    """valid says every frame is fine but dff is NaN throughout: no endless resampling."""
    ds = traces_recording(np.full((200, 3), np.nan), fs=10.0, name="empty")
    ds = ds.assign(valid=("time", np.ones(200, bool)))
    write_recording(ds, tmp_path / "empty.zarr")
    out = tmp_path / "m.pt"
    code, stdout, err = cli("fit", tmp_path / "empty.zarr", "-o", out, "--prior", "none")
    assert "finite samples" in assert_clean_cli_error(code, stdout, err, "empty")
    assert not out.exists()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (np.array([0.5, 1e300]), "further from the recording"),
        (np.array([-1e9, 0.5]), "further from the recording"),
    ],
)
def test_reconstruct_at_times_far_from_the_recording_is_refused(
    trained, tmp_path: Path, query: np.ndarray, message: str
) -> None:
    times = tmp_path / "t.npy"
    np.save(times, query)
    out = tmp_path / "up.zarr"
    code, stdout, err = cli(
        "reconstruct", trained["model"], trained["store"], "-o", out, "--times", times
    )
    assert message in assert_clean_cli_error(code, stdout, err, "t.npy")
    assert not out.exists()


def test_an_absurd_upsampling_is_refused_before_allocating(trained, tmp_path: Path) -> None:
    out = tmp_path / "up.zarr"
    code, stdout, err = cli(
        "reconstruct", trained["model"], trained["store"], "-o", out, "--upsample", str(10**12)
    )
    assert "output times" in assert_clean_cli_error(code, stdout, err)
    assert not out.exists()


@pytest.mark.parametrize(
    "setting", ["d_model = 1099511627776", "n_layers = 100000\nd_model = 4096"]
)
def test_an_absurd_network_is_refused_before_building_it(
    trained, tmp_path: Path, setting: str
) -> None:
    config = tmp_path / "big.toml"
    config.write_text(f'prior = "none"\n[model]\n{setting}\n')
    out = tmp_path / "m.pt"
    code, stdout, err = cli("fit", trained["store"], "-o", out, "--config", config)
    assert "parameters" in assert_clean_cli_error(code, stdout, err, "big.toml")
    assert not out.exists()


def test_a_model_from_another_recording_is_named_in_a_warning(
    trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cst_neuro.store import open_store

    ds = open_store(trained["store"])
    other = ds.assign(dff=ds["dff"] * 2.0 + 1.0)  # same ROIs, other data
    write_recording(other, tmp_path / "other.zarr")
    out = tmp_path / "up.zarr"
    code, _, err = cli(
        "reconstruct", trained["model"], tmp_path / "other.zarr", "-o", out, "--upsample", "2"
    )
    assert code == 0, err
    assert "was fitted to" in caplog.text and "not to this recording" in caplog.text
