"""The CST dock widget in a real napari viewer (pytest-qt, under Xvfb via pytest-xvfb).

Scrubs a picked recording at once with a tiny calcium prior (standing in for the shipped
one) and refines it with Train, reports failures in one line, trains a tiny model in the
widget (progress, live loss, cancel), loads one (or a prior), scrubs between frames and
checks the layers against an independent ``Reconstructor``, follows the trace plot,
changes K, exports, and opens ``cst-neuro view``. Skipped like ``test_napari_plugin.py``
when napari, pytest-qt or a display is missing.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="the napari extra is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")
npe2 = pytest.importorskip("npe2", reason="npe2 is not installed")

if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
    pytest.skip("napari needs OpenGL: run under Xvfb (pytest-xvfb)", allow_module_level=True)
if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    pytest.skip("no display for Qt: install Xvfb and pytest-xvfb", allow_module_level=True)

import tifffile  # noqa: E402
from napari.layers import Layer  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cst_neuro._cli.app import app  # noqa: E402
from cst_neuro._cli.view import open_viewer  # noqa: E402
from cst_neuro.fit_config import FitConfig  # noqa: E402
from cst_neuro.layers import recording_layers, roi_labels  # noqa: E402
from cst_neuro.reconstruct import Reconstructor  # noqa: E402
from cst_neuro.scrub import ROLES, ScrubSession  # noqa: E402
from cst_neuro.store import open_store, write_recording  # noqa: E402
from cst_neuro.train import fit  # noqa: E402
from napari_plugin._scrubber import Scrubber  # noqa: E402
from napari_plugin._trace_plot import TracePlot  # noqa: E402
from napari_plugin._widget import WIDGET_NAME  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
    pytest.mark.usefixtures("one_thread", "shipped_prior"),
]

MANIFEST = Path(__file__).resolve().parents[2] / "napari_plugin" / "napari.yaml"
PLUGIN = "cst-neuro"
K = 4
TIMEOUT = 60_000  # ms; training and loading run in worker threads


@pytest.fixture(scope="module")
def recording(simulate_recording):
    return simulate_recording(16, 90, fov=(48, 48), seed=11)[1]


@pytest.fixture(scope="module")
def model(recording, tmp_path_factory, tiny_fit_config) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    fit(recording, path, config=tiny_fit_config(), device="cpu")
    return path


@pytest.fixture
def shipped_prior(tiny_prior: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny prior stands in for the shipped one, which the widget binds to recordings."""
    monkeypatch.setattr("cst_neuro.prior.default_prior_path", lambda: tiny_prior)
    return tiny_prior


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder (``tempfile.gettempdir()``) of this test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def viewer_and_widget(make_napari_viewer, ds):
    viewer = make_napari_viewer()
    for layer in recording_layers(ds):
        viewer.add_layer(Layer.create(*layer))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET_NAME)
    return viewer, widget


def wait_idle(qtbot, widget) -> None:
    """Until the widget's jobs and the scrubber's model queries have finished."""
    qtbot.waitUntil(
        lambda: (
            (widget.worker is None or not widget.worker.is_running)
            and not widget.binders
            and (widget.scrubber is None or not widget.scrubber.busy)
        ),
        timeout=TIMEOUT,
    )


def assert_shows(qtbot, viewer, scrubber, t: float, model: Path, ds) -> None:
    """At time ``t`` the reconstruction layer shows ``model``'s prediction (an independent
    Reconstructor of the file)."""
    viewer.dims.set_point(scrubber.time_axis, t)
    qtbot.waitUntil(lambda: scrubber.shown is not None and scrubber.shown.time == t)
    step = viewer.dims.current_step[scrubber.time_axis]
    expected = painted(ds, Reconstructor.from_checkpoint(model, ds).predict([t])[0, :, 0])
    recon = scrubber.layers["reconstruction"].data[step]
    np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)


def painted(ds, values: np.ndarray) -> np.ndarray:
    labels = roi_labels(ds)
    out = np.full(labels.shape, np.nan, np.float32)
    out[labels > 0] = values[labels[labels > 0] - 1]
    return out


def test_manifest_offers_the_widget() -> None:
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert [w.display_name for w in manifest.contributions.widgets] == [WIDGET_NAME]


def test_train_with_progress_and_cancel(
    make_napari_viewer, qtbot, recording, model, tmp_path, tiny_fit_config
) -> None:
    viewer, widget = viewer_and_widget(make_napari_viewer, recording)
    assert widget.recording is recording
    widget.model_path.setText(str(tmp_path / "m.pt"))
    widget.train(tiny_fit_config(max_epochs=3))
    assert widget.cancel_button.isEnabled() and not widget.train_button.isEnabled()
    widget.cancel()  # stops after the first epoch, keeping its model
    qtbot.waitUntil(lambda: widget.result is not None, timeout=TIMEOUT)
    assert widget.result.stopped == "cancelled" and widget.result.epochs == 1
    assert widget.progress.value() == 1 and widget.progress.maximum() == 3
    assert widget.loss_label.text().startswith("epoch 1/3: training loss")
    assert (tmp_path / "m.pt").is_file() and "model saved" in widget.status.text()
    wait_idle(qtbot, widget)
    widget.model_path.setText(str(model))  # a file this widget did not write
    assert widget.train(tiny_fit_config()) is None
    assert widget.status.text() == f"error: {model} already exists; choose another model file"
    assert {layer.metadata.get("cst_scrub") for layer in viewer.layers} >= {
        "reconstruction",
        "raw",
        "difference",
    }
    wait_idle(qtbot, widget)


def test_a_picked_recording_is_scrubbed_with_the_prior_and_train_refines_it(
    make_napari_viewer, qtbot, recording, scratch, tmp_path, tiny_fit_config
) -> None:
    viewer, widget = viewer_and_widget(make_napari_viewer, recording)
    qtbot.waitUntil(lambda: widget.scrubber is not None and widget.scrubber.ready, timeout=TIMEOUT)
    first, name, fs = widget.scrubber, recording.attrs["source_name"], recording.attrs["fs"]
    assert first.session.prior == "default" and widget.prior_box.currentData() == "default"
    assert widget.status.text() == (
        f"scrubbing {name} with the calcium prior (default), zero-shot; Train refines it"
    )
    assert widget.loss_label.text() == first.session.blend.line()
    zero_shot = fit(recording, tmp_path / "zs.pt", config=FitConfig(max_epochs=0), device="cpu")
    t1, t2 = 30 / fs + 1 / (K * fs), 30 / fs + 2 / (K * fs)
    assert_shows(qtbot, viewer, first, t1, zero_shot.path, recording)
    wait_idle(qtbot, widget)
    layers, n_layers = dict(first.layers), len(viewer.layers)

    refined = tmp_path / "refined.pt"
    widget.model_path.setText(str(refined))
    widget.train(tiny_fit_config(prior="default", model={}, window=32))  # fine-tunes the prior
    qtbot.waitUntil(lambda: widget.result is not None, timeout=TIMEOUT)
    second = widget.scrubber
    assert second is not first and second.session.prior is None
    qtbot.waitUntil(lambda: second.ready, timeout=TIMEOUT)
    assert second.layers == layers and len(viewer.layers) == n_layers  # the same objects
    assert widget.status.text().startswith(
        "trained 1 epochs from the calcium prior (default) (stopped: max-epochs)"
    )
    assert widget.status.text().splitlines()[1] == widget.result.blend.line()
    assert_shows(qtbot, viewer, second, t2, refined, recording)
    wait_idle(qtbot, widget)
    assert list(scratch.rglob("*zero-shot*")) == []  # the zero-shot model file is gone


def test_failures_are_one_line_in_the_widget(
    make_napari_viewer, qtbot, recording, tiny_prior, tmp_path, monkeypatch
) -> None:
    """A missing prior or a recording too short for its windows: one line, no traceback
    notification, the recording still viewable (and another prior can be chosen)."""
    missing = tmp_path / "missing.pt"
    monkeypatch.setattr("cst_neuro.prior.default_prior_path", lambda: missing)
    notified: list[object] = []
    monkeypatch.setattr(notification_manager, "receive_error", lambda *a: notified.append(a))
    viewer, widget = viewer_and_widget(make_napari_viewer, recording)
    n_layers = len(viewer.layers)
    problem = f"error: {missing}: no such checkpoint file"
    qtbot.waitUntil(lambda: widget.status.text() == problem, timeout=TIMEOUT)
    assert widget.scrubber is None and len(viewer.layers) == n_layers
    assert widget.train_button.isEnabled()

    widget.status.clear()
    widget.model_path.setText(str(tmp_path / "m.pt"))
    widget.train()  # starts from the chosen (missing) prior too
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT)
    assert widget.status.text() == problem

    widget.set_prior(str(tiny_prior))  # nothing scrubbed yet: bound to the new prior at once
    assert widget.prior_box.currentText() == "p.pt"
    qtbot.waitUntil(lambda: widget.scrubber is not None, timeout=TIMEOUT)
    short = recording.isel(time=slice(0, 20)).assign_attrs(source_name="short")
    widget.add_recording(short)
    qtbot.waitUntil(lambda: widget.status.text().startswith("error:"), timeout=TIMEOUT)
    assert widget.status.text() == (
        "error: short: window of 32 frames does not fit a recording of 20 frames"
    )
    assert widget.scrubber.session.name == recording.attrs["source_name"]
    wait_idle(qtbot, widget)
    assert notified == []


def test_closing_while_binding_leaves_nothing_behind(
    make_napari_viewer, qtbot, recording, scratch
) -> None:
    viewer, widget = viewer_and_widget(make_napari_viewer, recording)
    n_layers = len(viewer.layers)
    qtbot.waitUntil(lambda: bool(widget.binders))
    widget.close()
    wait_idle(qtbot, widget)
    qtbot.wait(50)
    assert widget.scrubber is None and len(viewer.layers) == n_layers
    assert list(scratch.rglob("*zero-shot*")) == []


def test_a_prior_loaded_as_a_model_is_bound_zero_shot(
    make_napari_viewer, qtbot, recording, tiny_prior
) -> None:
    _, widget = viewer_and_widget(make_napari_viewer, recording)
    model_file = widget.model_path.text()
    widget.load_model(tiny_prior)
    qtbot.waitUntil(lambda: widget.scrubber is not None and widget.scrubber.ready, timeout=TIMEOUT)
    assert widget.scrubber.session.prior == str(tiny_prior)
    assert widget.prior == str(tiny_prior) and widget.prior_box.currentText() == "p.pt"
    assert widget.model_path.text() == model_file  # Train never writes over the prior
    name = recording.attrs["source_name"]
    assert widget.status.text() == (
        f"loaded {tiny_prior}: scrubbing {name} with the calcium prior (p.pt), zero-shot; "
        "Train refines it"
    )
    wait_idle(qtbot, widget)


def test_scrub_trace_and_export(make_napari_viewer, qtbot, recording, model, tmp_path) -> None:
    viewer, widget = viewer_and_widget(make_napari_viewer, recording)
    widget.load_model(model)
    qtbot.waitUntil(lambda: widget.scrubber is not None and widget.scrubber.ready, timeout=TIMEOUT)
    scrubber, fs = widget.scrubber, recording.attrs["fs"]
    axis = scrubber.time_axis
    assert viewer.dims.range[axis].step == pytest.approx(1 / (K * fs))  # K positions per frame

    fresh = Reconstructor.from_checkpoint(model, recording)
    layers = scrubber.layers
    t1, t2 = 30 / fs + 1 / (K * fs), 30 / fs + 2 / (K * fs)  # frame 30 + 1/4, + 2/4
    shown = []
    for t in (t1, t2):
        viewer.dims.set_point(axis, t)
        qtbot.waitUntil(lambda t=t: scrubber.shown is not None and scrubber.shown.time == t)
        step = viewer.dims.current_step[axis]  # the slider's index: K × frame + 1 or 2
        recon = np.array(layers["reconstruction"].data[step])
        expected = painted(recording, fresh.predict([t])[0, :, 0])
        np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)
        raw = painted(recording, recording["dff"].values[scrubber.shown.frame])
        np.testing.assert_allclose(layers["raw"].data[step], raw, rtol=1e-6)
        np.testing.assert_allclose(layers["difference"].data[step], expected - raw, atol=1e-5)
        shown.append(recon)
    assert not np.allclose(shown[0], shown[1], equal_nan=True)
    assert widget.time_label.text() == scrubber.readout == f"t = {t2:.4f} s (frame 30 +0.50)"

    footprints = next(la for la in viewer.layers if la.metadata.get("variable") == "footprints")
    footprints.selected_label = 4  # pick ROI 4 → position 3
    plot = widget.plot
    qtbot.waitUntil(lambda: plot.trace is not None and plot.trace.selection.channel == 3)
    np.testing.assert_allclose(plot.lines["reconstruction"].get_ydata(), plot.trace.values)
    np.testing.assert_allclose(
        plot.lines["reconstruction"].get_ydata(),
        fresh.predict(plot.trace.times, np.array([3]))[:, 0, 0],
        rtol=1e-5,
        atol=1e-6,
    )
    assert plot.cursor_time == pytest.approx(t2)
    viewer.dims.set_point(axis, t1)
    assert plot.cursor_time == pytest.approx(t1)

    y, x = np.argwhere(roi_labels(recording) == 7)[0]
    shift = layers["difference"].translate[-1]  # a click on the difference panel
    assert scrubber.select_at((t1, float(y), float(x) + shift)).channel == 6
    qtbot.waitUntil(lambda: plot.trace.selection.channel == 6)

    viewer.dims.set_point(axis, t2)
    widget.upsample_box.setValue(2)  # K = 2: new layers, same time (a K = 2 position)
    assert viewer.dims.range[scrubber.time_axis].step == pytest.approx(1 / (2 * fs))
    assert viewer.dims.point[scrubber.time_axis] == pytest.approx(t2)
    wait_idle(qtbot, widget)

    widget.export_reconstruction(tmp_path / "rec.zarr")
    qtbot.waitUntil(lambda: widget.status.text().startswith("wrote"), timeout=TIMEOUT)
    n_times = (recording.sizes["time"] - 1) * 2 + 1
    assert open_store(tmp_path / "rec.zarr").sizes["time"] == n_times
    movie = tmp_path / "scrubbed.tif"
    widget.export_movie(movie)  # from the first to the last time shown
    qtbot.waitUntil(lambda: widget.status.text() == f"wrote {movie}", timeout=TIMEOUT)
    lo, hi = scrubber.scrubbed
    n_times = round((hi - lo) * 2 * fs) + 1
    assert tifffile.imread(movie).shape == (n_times, 3, 48, 48)
    wait_idle(qtbot, widget)


def test_a_new_model_reuses_the_layers_and_the_selection(
    make_napari_viewer, qtbot, recording, model, tmp_path, tiny_fit_config
) -> None:
    """Loading another model for the same recording keeps the three layers (napari runs a
    full garbage collection per removed layer) and re-plots the selected ROI with it."""
    viewer, widget = viewer_and_widget(make_napari_viewer, recording)
    widget.load_model(model)
    qtbot.waitUntil(lambda: widget.scrubber is not None and widget.scrubber.ready, timeout=TIMEOUT)
    first, plot = widget.scrubber, widget.plot
    first.select(first.session.roi_selection(3))
    qtbot.waitUntil(lambda: plot.trace is not None)
    wait_idle(qtbot, widget)
    layers, n_layers = dict(first.layers), len(viewer.layers)
    other = tmp_path / "other.pt"
    fit(recording, other, config=tiny_fit_config(seed=1), device="cpu")
    widget.load_model(other)
    qtbot.waitUntil(lambda: widget.scrubber is not first, timeout=TIMEOUT)
    second = widget.scrubber
    qtbot.waitUntil(lambda: second.ready and second.shown is not None, timeout=TIMEOUT)
    fresh = Reconstructor.from_checkpoint(other, recording)
    before = Reconstructor.from_checkpoint(model, recording).predict(plot.trace.times, [3])
    assert not np.allclose(before, fresh.predict(plot.trace.times, [3]), atol=1e-3)
    wait_idle(qtbot, widget)  # the trace of the new model, asked for once it was ready
    assert second.layers == layers and len(viewer.layers) == n_layers  # the same objects
    step = viewer.dims.current_step[second.time_axis]
    np.testing.assert_allclose(
        layers["reconstruction"].data[step],
        painted(recording, fresh.predict([second.shown.time])[0, :, 0]),
        rtol=1e-5,
        atol=1e-6,
    )
    assert plot.trace.selection == first.selection
    np.testing.assert_allclose(
        plot.trace.values, fresh.predict(plot.trace.times, np.array([3]))[:, 0, 0], atol=1e-6
    )


def test_layers_arrive_after_the_constructor_returns(
    make_napari_viewer, qtbot, recording, model
) -> None:
    """napari's ~50-100 ms per new layer is spread over event-loop turns, not one block."""
    viewer = make_napari_viewer()
    for layer in recording_layers(recording):
        viewer.add_layer(Layer.create(*layer))
    session = ScrubSession.from_checkpoint(model, recording, upsample=K)
    n_layers = len(viewer.layers)

    plot = TracePlot()
    viewer.window.add_dock_widget(plot, area="bottom")  # as the widget does

    def repaints() -> bool:
        return plot.window().updatesEnabled()

    repaint_on_insert = []  # the window's repaint is held while each layer is added
    viewer.layers.events.inserted.connect(lambda event: repaint_on_insert.append(repaints()))
    scrubber = Scrubber(viewer, session, plot, on_error=print)
    assert len(viewer.layers) == n_layers and not scrubber.ready and scrubber.time is None
    qtbot.waitUntil(lambda: scrubber.ready)
    assert [la.metadata.get("cst_scrub") for la in viewer.layers][n_layers:] == list(ROLES)
    assert repaint_on_insert == [False] * len(ROLES) and repaints()
    qtbot.waitUntil(lambda: scrubber.shown is not None)  # the first frame, once ready
    qtbot.waitUntil(lambda: not scrubber.busy)
    scrubber.close()
    assert len(viewer.layers) == n_layers

    closed_early = Scrubber(viewer, session, TracePlot(), on_error=print)
    closed_early.close()  # before any layer was added: none arrives later
    qtbot.wait(50)
    assert len(viewer.layers) == n_layers

    closed_while_held = Scrubber(viewer, session, plot, on_error=print)
    closed = []  # a posted event runs before the tick that would release the repaint

    def close_soon(event: object) -> None:
        QTimer.singleShot(0, lambda: closed.append(closed_while_held.close()))

    viewer.layers.events.inserted.connect(close_soon)
    qtbot.waitUntil(lambda: bool(closed))
    assert repaint_on_insert[-1] is False  # it was closed while the repaint was held
    qtbot.wait(50)
    assert len(viewer.layers) == n_layers and repaints()


def test_view_command_opens_store_and_model(qtbot, recording, model, tmp_path) -> None:
    store = write_recording(recording, tmp_path / "rec.zarr")
    widget = open_viewer(store, model, upsample=3)
    try:
        assert widget.scrubber is not None and widget.scrubber.session.upsample == 3
        assert widget.upsample_box.value() == 3
        assert widget.loss_label.text().startswith("loaded a cst model (")
        assert widget.status.text() == f"loaded {model}"
        assert widget.recording_box.currentText() == recording.attrs["source_name"]
        assert widget.scrubber.session.held_out.any()  # the store holds the training data
        qtbot.waitUntil(lambda: widget.scrubber.shown is not None)
        wait_idle(qtbot, widget)
        assert not widget.binders  # the model took the place of the zero-shot binding
    finally:
        widget.viewer.close()
    widget = open_viewer(store, None, upsample=3)  # the calcium prior, zero-shot
    try:
        assert widget.scrubber is None
        qtbot.waitUntil(lambda: widget.scrubber is not None, timeout=TIMEOUT)
        assert widget.scrubber.session.prior == "default"
        assert widget.scrubber.session.upsample == 3
        wait_idle(qtbot, widget)
    finally:
        widget.viewer.close()


def test_view_bad_input_is_one_line_and_exit_2(
    recording, tmp_path, monkeypatch, tiny_fit_config
) -> None:
    monkeypatch.chdir(tmp_path)
    write_recording(recording, tmp_path / "rec.zarr")
    other = recording.isel(roi=slice(0, 5))  # a model of 5 ROIs cannot scrub 16
    fit(other, tmp_path / "other.pt", config=tiny_fit_config(max_epochs=0), device="cpu")
    for args, message in (
        (["view", "missing.zarr"], "missing.zarr: no such file or folder"),
        (
            ["view", "rec.zarr", "--model", "missing.pt"],
            "missing.pt: no such checkpoint file",
        ),
        (["view", "rec.zarr", "--model", "other.pt"], "model was trained on 5 channels"),
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
