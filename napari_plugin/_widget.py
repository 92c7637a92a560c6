"""The CST dock widget: pick a recording, scrub it, train or load a model, plot, export.

npe2 widget contribution (``cst-neuro.make_widget``; spec:
https://napari.org/stable/plugins/building_a_plugin/guides.html#widgets). A thin Qt shell
over ``cst_neuro``: a picked recording is bound to the calcium prior zero-shot
(``ScrubSession.from_prior``) and scrubbed at once; training is ``cst_neuro.train.fit``
(fine-tuning the chosen prior) in a napari thread worker (its per-epoch ``callback`` drives
the progress bar and live loss, and stops it on Cancel), and its model replaces the
zero-shot one in the same layers; scrubbing, traces and exports are
``cst_neuro.scrub.ScrubSession`` behind a ``napari_plugin._scrubber.Scrubber``. Nothing
slow runs on the UI thread: binding the prior, training, loading a model, every model
query and both exports run in thread workers. The package's own errors (bad input) end as
one line in the widget; napari's traceback notification is kept for anything else (bugs).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr
from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from cst_neuro.errors import CSTNeuroError
from cst_neuro.fit_config import FitConfig
from cst_neuro.prior import DEFAULT, NONE, prior_name
from cst_neuro.scrub import DEFAULT_UPSAMPLE, ScrubSession, modelled_recording
from cst_neuro.train import FitResult
from napari_plugin._scrubber import Scrubber
from napari_plugin._trace_plot import TracePlot

WIDGET_NAME = "CST scrubber"  # display name in napari.yaml


@dataclass(frozen=True)
class _Refused:
    """A job's bad input: the error, returned by the worker instead of raised."""

    error: CSTNeuroError


class _EpochSignal(QObject):
    """Carries fit's per-epoch callback from the training thread to the UI thread."""

    epoch = Signal(int, float, float)


class CSTWidget(QWidget):
    """Dock widget: recording → model (train / load) → sub-frame scrubbing and exports."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.scrubber: Scrubber | None = None
        self.result: FitResult | None = None  # the last training run
        self.worker: Any = None  # the running training, loading or export job
        self.binders: set[Any] = set()  # zero-shot bindings of the prior still running
        self.prior = DEFAULT  # what Train starts from and a picked recording is bound to
        self.plot = TracePlot()
        self._plot_dock: Any = None
        self._cancel = threading.Event()
        self._epochs = _EpochSignal()
        self._epochs.epoch.connect(self._on_epoch)
        self._recordings: dict[str, xr.Dataset] = {}
        self._written: set[Path] = set()  # model files this widget trained
        self._picked: xr.Dataset | None = None  # the recording picked last
        self._bind_wanted: object | None = None  # the zero-shot binding still wanted
        self._bind_timer = QTimer(self)  # binding starts on the next event-loop turn
        self._bind_timer.setSingleShot(True)
        self._bind_timer.timeout.connect(self._bind)
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_recordings)
        self.viewer.layers.events.removed.connect(self._refresh_recordings)
        self._refresh_recordings()

    # ---- UI --------------------------------------------------------------------------

    def _build(self) -> None:
        defaults = FitConfig()
        self.recording_box = QComboBox()
        self.prior_box = QComboBox()
        self.prior_box.addItem("calcium prior (shipped)", DEFAULT)
        self.prior_box.addItem("none: train from scratch", NONE)
        self.prior_box.addItem("other prior file…", None)
        self.epochs_box = _spin(QSpinBox(), 1, 100_000, defaults.max_epochs)
        self.minutes_box = _spin(QDoubleSpinBox(), 0.1, 10_000.0, defaults.max_minutes)
        self.model_path = QLineEdit(str(Path(tempfile.gettempdir()) / "cst-neuro-model.pt"))
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.load_button = QPushButton("Load model…")
        self.progress = QProgressBar()
        self.loss_label = QLabel("no model yet")
        self.upsample_box = _spin(QSpinBox(), 1, 64, DEFAULT_UPSAMPLE)
        self.baselines_box = QCheckBox("show linear and PCHIP baselines")
        self.baselines_box.setChecked(True)
        self.time_label = QLabel("–")  # the exact time shown, from the scrubber
        self.panels_label = QLabel("left to right: CST reconstruction | nearest frame | difference")
        self.panels_label.setWordWrap(True)
        self.export_zarr_button = QPushButton("Reconstruction (zarr)…")
        self.export_movie_button = QPushButton("Movie of scrubbed range (TIFF)…")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.loss_label.setWordWrap(True)

        model = QFormLayout()
        model.addRow("prior", self.prior_box)
        model.addRow("max epochs", self.epochs_box)
        model.addRow("max minutes", self.minutes_box)
        model.addRow("model file", self.model_path)
        buttons = QHBoxLayout()
        for button in (self.train_button, self.cancel_button, self.load_button):
            buttons.addWidget(button)
        model.addRow(buttons)
        model.addRow(self.progress)
        model.addRow(self.loss_label)
        scrub = QFormLayout()
        scrub.addRow("positions per frame (K)", self.upsample_box)
        scrub.addRow(self.baselines_box)
        scrub.addRow("time", self.time_label)
        scrub.addRow(self.panels_label)
        export = QVBoxLayout()
        export.addWidget(self.export_zarr_button)
        export.addWidget(self.export_movie_button)

        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("recording", self.recording_box)
        layout.addLayout(form)
        for title, inner in (("Model", model), ("Scrub", scrub), ("Export", export)):
            group = QGroupBox(title)
            group.setLayout(inner)
            layout.addWidget(group)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.recording_box.currentIndexChanged.connect(self._picked_changed)
        self.prior_box.activated.connect(self._prior_activated)
        self.train_button.clicked.connect(lambda: self.train())
        self.cancel_button.clicked.connect(self.cancel)
        self.load_button.clicked.connect(self._choose_model)
        self.upsample_box.valueChanged.connect(self.set_upsample)
        self.baselines_box.toggled.connect(self.plot.set_baselines_visible)
        self.export_zarr_button.clicked.connect(self._choose_zarr)
        self.export_movie_button.clicked.connect(self._choose_movie)
        self._update_controls()

    def _update_controls(self) -> None:
        busy, scrubbing = self.worker is not None, self.scrubber is not None
        for button in (self.train_button, self.load_button, self.recording_box, self.prior_box):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy and not self._cancel.is_set())
        for button in (self.export_zarr_button, self.export_movie_button, self.upsample_box):
            button.setEnabled(scrubbing and not busy)

    def _refresh_recordings(self, event: Any = None) -> None:
        """List the viewer's recordings (layers whose metadata holds one)."""
        current = self.recording_box.currentText()
        found = {
            str(layer.metadata["recording"].attrs.get("source_name") or layer.name): layer.metadata[
                "recording"
            ]
            for layer in self.viewer.layers
            if isinstance(layer.metadata.get("recording"), xr.Dataset)
        }
        self._recordings = {
            **found,
            **{k: v for k, v in self._recordings.items() if k not in found},
        }
        self.recording_box.blockSignals(True)
        self.recording_box.clear()
        self.recording_box.addItems(list(self._recordings))
        if current in self._recordings:
            self.recording_box.setCurrentText(current)
        self.recording_box.blockSignals(False)
        self._picked_changed()

    def add_recording(self, ds: xr.Dataset) -> None:
        """Offer a Recording that no layer shows (e.g. traces without footprints) and pick it."""
        name = str(ds.attrs.get("source_name") or "recording")
        self._recordings[name] = ds
        self._refresh_recordings()
        self.recording_box.setCurrentText(name)

    @property
    def recording(self) -> xr.Dataset | None:
        return self._recordings.get(self.recording_box.currentText())

    def _report(self, message: str) -> None:
        self.status.setText(message)

    def _failed(self, error: Exception) -> None:
        self._report(f"error: {error}")

    def _worker(
        self,
        job: Callable[..., Any],
        done: Callable[[Any], None],
        failed: Callable[[Exception], None],
        *args: Any,
    ) -> Any:
        """A thread worker (not started) of ``job(*args)``: ``done(result)`` on the UI thread,
        or ``failed(error)``. The package's own errors come back wrapped in a result (a raised
        or returned exception is re-raised in the event loop, and napari notifies it with a
        traceback): they are bad input, said in one line."""

        def guarded(*args: Any) -> Any:
            try:
                return job(*args)
            except CSTNeuroError as e:
                return _Refused(e)

        def returned(out: Any) -> None:
            if isinstance(out, _Refused):
                failed(out.error)
            else:
                done(out)

        worker = thread_worker(guarded)(*args)
        worker.returned.connect(returned)
        worker.errored.connect(failed)
        return worker

    def _run(self, job: Callable[..., Any], done: Callable[[Any], None], *args: Any) -> Any:
        """Run ``job(*args)`` as the widget's one job (Train, Load model…, an export)."""
        self.worker = self._worker(job, done, self._failed, *args)
        self.worker.finished.connect(self._finished)
        self.worker.start()
        self._update_controls()
        return self.worker

    def _finished(self) -> None:
        self.worker = None
        self._update_controls()

    # ---- the prior, zero-shot ----------------------------------------------------------

    def _picked_changed(self, *_: Any) -> None:
        if self.recording is not self._picked:
            self._picked = self.recording
            self._schedule_bind()

    def _schedule_bind(self) -> None:
        """Bind the prior to the picked recording from the next event-loop turn (so a model
        given at once, as by ``cst-neuro view --model``, takes its place: ``use_session``)."""
        wanted = self.prior != NONE and self.recording is not None
        if not wanted and self._bind_wanted is not None:
            self._report("")  # no longer "binding the calcium prior…"
        self._bind_wanted = object() if wanted else None
        if wanted:
            self._bind_timer.start(0)

    def _bind(self) -> None:
        """Bind the prior to the picked recording zero-shot in a worker (Train meanwhile)."""
        wanted, ds, prior = self._bind_wanted, self.recording, self.prior
        if wanted is None or ds is None:
            return
        name, upsample = self.recording_box.currentText(), self.upsample_box.value()
        self._report(f"binding the calcium prior ({prior_name(prior)}) to {name}, zero-shot…")
        binder = self._worker(
            lambda: ScrubSession.from_prior(ds, prior, upsample=upsample),
            lambda session: self._bound(wanted, session),
            lambda error: self._bind_failed(wanted, error),
        )
        binder.finished.connect(lambda: self.binders.discard(binder))
        self.binders.add(binder)
        binder.start()

    def _bound(self, wanted: object, session: ScrubSession) -> None:
        if wanted is self._bind_wanted:
            session.set_upsample(self.upsample_box.value())  # K may have changed meanwhile
            self.use_session(session)
            self._report_zero_shot(session)

    def _bind_failed(self, wanted: object, error: Exception) -> None:
        if wanted is self._bind_wanted:
            self._bind_wanted = None
            self._failed(error)

    def _report_zero_shot(self, session: ScrubSession, loaded: str = "") -> None:
        blend = session.blend
        if self.worker is None:  # else the label is training's (a binding ready meanwhile)
            self.loss_label.setText(
                blend.line() if blend is not None else "zero-shot: no validation frames"
            )
        self._report(
            f"{loaded}scrubbing {session.name} with the calcium prior "
            f"({prior_name(session.prior)}), zero-shot; Train refines it"
        )

    def set_prior(self, spec: str) -> None:
        """Choose what Train starts from: ``default``, ``none`` or a prior file. A recording
        not scrubbed yet, or scrubbed zero-shot, is bound to the new prior at once."""
        changed = spec != self.prior
        self._select_prior(spec)
        if changed and (self.scrubber is None or self.scrubber.session.prior is not None):
            self._schedule_bind()

    def _select_prior(self, spec: str) -> None:
        index = self.prior_box.findData(spec)
        if index < 0:  # a file, listed before "other prior file…"
            index = self.prior_box.count() - 1
            self.prior_box.insertItem(index, Path(spec).name, spec)
        self.prior_box.setCurrentIndex(index)
        self.prior = spec

    def _prior_activated(self, index: int) -> None:
        spec = self.prior_box.itemData(index)
        if spec is None:  # "other prior file…"
            spec, _ = QFileDialog.getOpenFileName(
                self, "A calcium prior from cst-neuro pretrain", "", "prior (*.pt)"
            )
        self.set_prior(spec or self.prior)  # the current choice again when cancelled

    # ---- model -----------------------------------------------------------------------

    def train(self, config: FitConfig | None = None) -> Any:
        """Train a model on the chosen recording in a worker (the running worker is returned)."""
        ds = self.recording
        if ds is None:
            self._report("open a recording first (File > Open, or a sample)")
            return None
        config = config or FitConfig(
            max_epochs=self.epochs_box.value(),
            max_minutes=self.minutes_box.value(),
            prior=self.prior,
        )
        output, upsample = Path(self.model_path.text()).expanduser(), self.upsample_box.value()
        if output.exists() and output not in self._written:
            self._report(f"error: {output} already exists; choose another model file")
            return None
        self._written.add(output)  # later runs of this widget may replace it
        self._cancel.clear()
        self.progress.setRange(0, config.max_epochs)
        self.progress.setValue(0)
        self.loss_label.setText("preparing the recording…")
        return self._run(self._train_job, self._trained, ds, config, output, upsample)

    def _train_job(
        self, ds: xr.Dataset, config: FitConfig, output: Path, upsample: int
    ) -> tuple[FitResult, ScrubSession]:
        from cst_neuro.train import fit

        ds = modelled_recording(ds)

        def each_epoch(epoch: int, row: dict[str, float]) -> bool:
            self._epochs.epoch.emit(epoch, row["train"], row["val"])
            return self._cancel.is_set()

        result = fit(ds, output, config=config, callback=each_epoch)
        return result, ScrubSession.from_checkpoint(result.path, ds, upsample=upsample)

    def _on_epoch(self, epoch: int, train: float, val: float) -> None:
        self.progress.setValue(epoch)
        self.loss_label.setText(
            f"epoch {epoch}/{self.progress.maximum()}: training loss {train:.4g}, "
            f"validation MSE {val:.4g}"
        )

    def cancel(self) -> None:
        """Stop training after the current epoch (the best model so far is kept)."""
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self.loss_label.setText(f"{self.loss_label.text()} (cancelling after this epoch)")

    def _trained(self, out: tuple[FitResult, ScrubSession]) -> None:
        self.result, session = out
        self.use_session(session)
        r = self.result
        start = "from scratch" if r.prior == NONE else f"from the calcium prior ({r.prior})"
        self._report(
            f"trained {r.epochs} epochs {start} (stopped: {r.stopped}), best validation MSE "
            f"{r.best_val:.4g}; model saved to {r.path}"
            + ("" if r.blend is None else f"\n{r.blend.line()}")
        )

    def load_model(self, path: str | os.PathLike[str]) -> Any:
        """Load a model written by ``cst-neuro fit`` for the chosen recording, in a worker
        (a prior from ``cst-neuro pretrain`` is bound to it zero-shot)."""
        ds = self.recording
        if ds is None:
            self._report("open the model's recording first")
            return None
        self._bind_wanted = None  # the loaded model takes the place of a zero-shot one
        job = ScrubSession.from_checkpoint
        return self._run(
            lambda: job(path, ds, upsample=self.upsample_box.value()),
            lambda session: self.use_loaded(session, path),
        )

    def use_loaded(self, session: ScrubSession, path: str | os.PathLike[str]) -> None:
        """Scrub a model loaded from ``path`` (Load model…, or ``cst-neuro view --model``);
        a prior loaded so becomes the prior Train starts from."""
        self.use_session(session)
        if session.prior is not None:
            self._select_prior(session.prior)
            self._report_zero_shot(session, loaded=f"loaded {path}: ")
            return
        self.model_path.setText(str(path))
        n_params = sum(p.numel() for p in session.model.parameters())
        self.loss_label.setText(
            f"loaded a {session.checkpoint.mode} model ({n_params:,} parameters)"
        )
        self._report(f"loaded {path}")

    def _choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a cst-neuro model", "", "model (*.pt)")
        if path:
            self.load_model(path)

    # ---- scrubbing -------------------------------------------------------------------

    def use_session(self, session: ScrubSession) -> None:
        """Scrub ``session`` in the viewer (replacing any previous one, in its layers) with a
        trace plot; the plotted ROI stays selected when the recording is the same. A zero-shot
        binding still under way is no longer wanted."""
        self._bind_wanted = None
        old = self.scrubber
        reuse = [] if old is None else old.detach()
        if self._plot_dock is None:
            self._plot_dock = self.viewer.window.add_dock_widget(
                self.plot, area="bottom", name="CST trace"
            )
        self.upsample_box.blockSignals(True)
        self.upsample_box.setValue(session.upsample)
        self.upsample_box.blockSignals(False)
        self.scrubber = Scrubber(
            self.viewer,
            session,
            self.plot,
            on_error=lambda e: self._report(f"error: {e}"),
            on_readout=self.time_label.setText,
            reuse=reuse,
        )
        same = old is not None and (old.session.name, old.session.windows.n_channels) == (
            session.name,
            session.windows.n_channels,
        )
        if old is not None and same and old.selection is not None:
            self.scrubber.select(old.selection)
        else:
            self.plot.clear()
        self._update_controls()

    def set_upsample(self, upsample: int) -> None:
        """K slider positions per frame (rebuilds the scrubbing layers)."""
        if self.scrubber is not None and upsample != self.scrubber.session.upsample:
            self.scrubber.set_upsample(upsample)

    # ---- exports ---------------------------------------------------------------------

    def export_reconstruction(
        self, path: str | os.PathLike[str], *, overwrite: bool = False
    ) -> Any:
        """Write the reconstruction at K× the frame rate to a zarr store, in a worker."""
        scrubber = self._scrubber_or_report()
        if scrubber is None:
            return None
        session = scrubber.session
        self._report(f"writing {path}…")
        job = session.export_reconstruction
        return self._run(lambda: job(path, overwrite=overwrite), self._exported)

    def export_movie(
        self,
        path: str | os.PathLike[str],
        start: float | None = None,
        stop: float | None = None,
        *,
        overwrite: bool = False,
    ) -> Any:
        """Write a TIFF movie from ``start`` to ``stop`` (default: the scrubbed range)."""
        scrubber = self._scrubber_or_report()
        if scrubber is None:
            return None
        session = scrubber.session
        lo, hi = scrubber.scrubbed or (scrubber.time, scrubber.time)
        t0, t1 = lo if start is None else start, hi if stop is None else stop
        if t0 is None or t1 is None:
            self._report("scrub to a time first")
            return None
        self._report(f"writing {path} ({t0:.3f}-{t1:.3f} s)…")
        job = session.export_movie
        return self._run(lambda: job(path, t0, t1, overwrite=overwrite), self._exported)

    def _exported(self, path: Path) -> None:
        self._report(f"wrote {path}")

    def _scrubber_or_report(self) -> Scrubber | None:
        if self.scrubber is None:
            self._report("train or load a model first")
        return self.scrubber

    def _choose_zarr(self) -> None:
        scrubber = self._scrubber_or_report()
        path = QFileDialog.getExistingDirectory(self, "Folder for the reconstruction store")
        if path and scrubber is not None:
            name = f"{scrubber.session.name} reconstruction x{scrubber.session.upsample}"
            self.export_reconstruction(Path(path) / f"{name.replace(' ', '_')}.zarr")

    def _choose_movie(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Movie of the scrubbed range", "", "TIFF (*.tif)"
        )
        if path:  # the dialog has asked before replacing a file
            self.export_movie(path, overwrite=True)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self._bind_wanted = None
        if self.scrubber is not None:
            self.scrubber.close()
        super().closeEvent(event)


def _spin(box: Any, lo: float, hi: float, value: float) -> Any:
    box.setRange(lo, hi)
    box.setValue(value)
    return box
