"""The napari plugin inside a real napari viewer (pytest-qt, under Xvfb via pytest-xvfb).

Skipped with a reason when napari, pytest-qt or an X display is missing. Checks the npe2
manifest, ``viewer.open(..., plugin="cst-neuro")`` on the real Suite2p folders and on
simulated stores and folders, the reader hook on junk, and the sample data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="the napari extra is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")
npe2 = pytest.importorskip("npe2", reason="npe2 is not installed")

if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
    pytest.skip(
        "napari draws with OpenGL, which QT_QPA_PLATFORM=offscreen lacks: unset it and "
        "run under Xvfb (pytest-xvfb)",
        allow_module_level=True,
    )
if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    pytest.skip(
        "no display for Qt: install Xvfb (apt-get install xvfb) and pytest-xvfb",
        allow_module_level=True,
    )

from napari.layers import Image, Labels  # noqa: E402

from cst_neuro.simulate import write_simulation  # noqa: E402
from napari_plugin._reader import napari_get_reader  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")

MANIFEST = Path(__file__).resolve().parents[2] / "napari_plugin" / "napari.yaml"
PLUGIN = "cst-neuro"


def layer_of(viewer, variable: str):
    """The viewer's layer showing ``variable`` of the Recording."""
    found = [layer for layer in viewer.layers if layer.metadata.get("variable") == variable]
    assert len(found) == 1, [layer.name for layer in viewer.layers]
    return found[0]


def test_manifest_validates_and_is_installed() -> None:
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == PLUGIN
    assert [r.command for r in manifest.contributions.readers] == ["cst-neuro.get_reader"]
    assert manifest.contributions.readers[0].accepts_directories
    assert [s.key for s in manifest.contributions.sample_data] == ["simulated"]
    installed = npe2.PluginManifest.from_distribution(PLUGIN)  # the entry point works
    assert installed.name == PLUGIN


@pytest.mark.parametrize("name", ["v0_fissa_rochefort", "v1_optinist_mouse2p"])
def test_open_real_suite2p(make_napari_viewer, shared_data, name: str) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(shared_data / "suite2p" / name, plugin=PLUGIN)
    assert [type(layer) for layer in layers] == [Image, Labels]
    image, labels = layer_of(viewer, "mean_image"), layer_of(viewer, "footprints")
    ds = labels.metadata["recording"]
    assert labels.data.shape == image.data.shape
    assert int(labels.data.max()) == ds.sizes["roi"]
    assert labels.metadata["source_format"] == "suite2p"
    assert tuple(labels.axis_labels) == ("y", "x")
    assert len(labels.features) == ds.sizes["roi"] + 1


def test_open_simulated_folder_with_movie(make_napari_viewer, tmp_path) -> None:
    folder = write_simulation(tmp_path / "suite2p", layout="suite2p-v1", n_rois=20,
                              n_frames=90, fov=(64, 64), data_bin=True, seed=2)  # fmt: skip
    viewer = make_napari_viewer()
    viewer.open(folder, plugin=PLUGIN)
    movie = layer_of(viewer, "movie")
    assert movie.data.shape == (90, 64, 64)
    assert movie.scale[0] == pytest.approx(1 / 30)
    assert tuple(movie.axis_labels) == ("time", "y", "x")
    assert str(movie.units[0]) == "second"
    assert layer_of(viewer, "footprints").data.max() > 0
    assert viewer.dims.ndim == 3
    viewer.dims.set_point(0, 2.0)  # scrub to t = 2 s: frame 60
    assert movie.world_to_data(viewer.dims.point)[0] == pytest.approx(60)


def test_open_simulated_store(make_napari_viewer, tmp_path) -> None:
    store = write_simulation(tmp_path / "sim.zarr", layout="zarr", n_rois=20, n_frames=60,
                             fov=(64, 64), seed=0)  # fmt: skip
    viewer = make_napari_viewer()
    viewer.open(store, plugin=PLUGIN)
    assert {layer.metadata["variable"] for layer in viewer.layers} == {
        "mean_image",
        "footprints",
    }
    assert int(layer_of(viewer, "footprints").data.max()) == 20
    assert "dff" in layer_of(viewer, "mean_image").metadata["recording"]


def test_traces_only_opens_no_layers(make_napari_viewer, tmp_path) -> None:
    path = tmp_path / "dff.npy"
    np.save(path, np.zeros(50, np.float32))
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning) as record:
        viewer.open(path, plugin=PLUGIN)
    assert len(viewer.layers) == 0
    messages = " ".join(str(w.message) for w in record)
    assert "no sampling rate" in messages and "nothing to display" in messages


def test_reader_refuses_junk(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (str(text), str(tmp_path / "missing.tif"), str(tmp_path)):
        assert napari_get_reader(path) is None


def test_sample_data(make_napari_viewer) -> None:
    viewer = make_napari_viewer(show=True)  # a hidden canvas screenshots black
    viewer.open_sample(PLUGIN, "simulated")
    assert {layer.metadata["variable"] for layer in viewer.layers} == {
        "mean_image",
        "movie",
        "footprints",
    }
    assert layer_of(viewer, "movie").data.shape == (600, 128, 128)
    assert int(layer_of(viewer, "footprints").data.max()) == 60
    shot = viewer.screenshot(canvas_only=True, flash=False)  # really drawn (OpenGL on X)
    assert shot.ndim == 3 and shot[..., :3].std() > 0
