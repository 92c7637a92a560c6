"""Sub-frame scrubbing in a napari viewer: the Qt/napari side of ``cst_neuro.scrub``.

``Scrubber`` adds a session's three layers (reconstruction, nearest frame, difference;
``cst_neuro.scrub.scrub_layers``) and listens to ``viewer.dims.events.point``. The layers'
time axis has K steps per frame (scale 1 / (K·fs)), so the slider offers K positions per
frame and ``dims.point`` is a real-valued time in seconds; for that exact time the frames
are computed on demand (``ScrubSession.frames_at``) and written into the layers' shared
frame buffers. Model queries run in napari thread workers, one at a time, and only the
newest request waits while one runs, so dragging the slider never queues stale work and
the UI thread only copies finished images. napari spends 50-100 ms of the UI thread on
each new layer (Qt controls, vispy node, dims) and as much again on the first paint of
each (shader compilation), so attaching is a chain of timer ticks, with input and paint
events served in between: add each layer hidden, show each, then ask for the first frame;
the scrubber is ``ready`` once all layers are in. While a layer is added, the repaint of
the window that holds the trace plot (the viewer's, once the plot is docked) is held until
the next tick: the first 3-D layer also creates the time slider, whose layout change would
otherwise repaint the whole window in the same turn. A scrubber for a new model takes
over the previous one's layers (``detach``; napari runs a full garbage collection for each
layer it removes). The time readout goes to a callback (the widget's label), not to a
canvas text overlay: vispy renders each new glyph on the CPU, ~150 ms for the first
readout under software OpenGL. A click on an image (or picking a label in the recording's
ROI labels layer) selects an ROI or grid pixel for the trace plot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from napari.layers import Labels, Layer
from napari.qt.threading import thread_worker
from qtpy.QtCore import QTimer

from cst_neuro.scrub import ROLES, Frames, ScrubSession, Selection, Trace, scrub_layers
from napari_plugin._trace_plot import TracePlot

CLICK_PIXELS = 4  # a press and release further apart than this (canvas pixels) is a drag
LAYER_DELAY_MS = 5  # a real timer: QTimer.singleShot(0) is a posted event, served before
# input and paint, so zero-delay steps would run back to back


class LatestOnly:
    """Runs ``job(arg)`` in a napari thread worker, one at a time; only the newest
    request waits while one runs (older waiting requests are dropped)."""

    def __init__(
        self,
        job: Callable[[Any], Any],
        done: Callable[[Any], None],
        failed: Callable[[Exception], None],
    ) -> None:
        self._job, self._done, self._failed = job, done, failed
        self._pending: tuple[Any] | None = None
        self.worker: Any = None

    @property
    def busy(self) -> bool:
        return self.worker is not None or self._pending is not None

    def request(self, arg: Any) -> None:
        self._pending = (arg,)
        if self.worker is None:
            self._next()

    def _next(self) -> None:
        if self._pending is None:
            return
        (arg,) = self._pending
        self._pending = None
        self.worker = thread_worker(self._job)(arg)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def _finished(self) -> None:
        self.worker = None
        self._next()


class Scrubber:
    """A ScrubSession shown in a viewer: layers, time listening, selection, trace plot."""

    def __init__(
        self,
        viewer: Any,
        session: ScrubSession,
        plot: TracePlot,
        *,
        on_error: Callable[[Exception], None],
        on_readout: Callable[[str], None] | None = None,
        reuse: Iterable[Layer] = (),
    ) -> None:
        self.viewer, self.session, self.plot = viewer, session, plot
        self.on_readout = on_readout
        self.readout = ""  # the time shown, e.g. "t = 1.2500 s (frame 37 +0.50)"
        self.shown: Frames | None = None  # the frames on screen
        self.selection: Selection | None = None
        self.scrubbed: tuple[float, float] | None = None  # range of times shown so far
        self._requested: float | None = None
        self._frames = LatestOnly(session.frames_at, self._show_frames, on_error)
        self._traces = LatestOnly(lambda a: session.trace(*a), self._show_trace, on_error)
        self.layers: dict[str, Layer] = {}
        self._closed = self._ready = False
        self._held: Any = None  # the window whose repaint is held
        layers, self._buffers = scrub_layers(session)
        self._pending = [(data, kwargs) for data, kwargs, _ in layers]  # layers still to add
        # a previous scrubber's layers (``detach``), by role
        self._reuse = {layer.metadata["cst_scrub"]: layer for layer in reuse}
        self._labels_layers: list[Labels] = []
        viewer.dims.events.point.connect(self._on_point)
        viewer.mouse_drag_callbacks.append(self._on_click)
        if session.windows.layout != "grid":
            self._labels_layers = [
                layer
                for layer in viewer.layers
                if isinstance(layer, Labels)
                and layer.metadata.get("variable") == "footprints"
                and layer.metadata.get("source_name") == session.ds.attrs.get("source_name")
            ]
            for layer in self._labels_layers:
                layer.events.selected_label.connect(self._on_label)
        QTimer.singleShot(LAYER_DELAY_MS, self._attach_step)

    # ---- layers and time -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether all three layers are in the viewer and shown (see the module docstring)."""
        return self._ready

    def _attach_step(self) -> None:
        """One step of attaching per timer tick: add a layer hidden (holding the window's
        repaint), let the window repaint, show a layer, or finish."""
        if self._closed:
            return
        hidden = next((layer for layer in self.layers.values() if not layer.visible), None)
        if self._held is not None:
            self._release_window()
        elif self._pending:
            data, kwargs = self._pending.pop(0)
            role = kwargs["metadata"]["cst_scrub"]
            layer = self._reuse.pop(role, None)
            if layer is not None and layer in self.viewer.layers and layer.ndim == data.ndim:
                _point(layer, data, kwargs)
            else:
                if layer is not None and layer in self.viewer.layers:  # frames of another ndim
                    self.viewer.layers.remove(layer)
                layer = self._add_hidden(data, kwargs)
            self.layers[role] = layer
        elif hidden is not None:
            hidden.visible = True
        else:
            self._ready = True
            self._on_point()
            if self.selection is not None and not self._traces.busy:  # selected before ready
                self._traces.request((self.selection, self.time))
            return
        QTimer.singleShot(LAYER_DELAY_MS, self._attach_step)

    def _add_hidden(self, data: np.ndarray, kwargs: dict[str, Any]) -> Layer:
        """A new hidden layer, with the window's repaint held until the next tick."""
        self._held = self.plot.window()  # napari's main window once the plot is docked
        self._held.setUpdatesEnabled(False)
        try:
            return self.viewer.add_image(data, visible=False, **kwargs)
        except Exception:
            self._release_window()
            raise

    @property
    def time_axis(self) -> int:
        """The viewer's world axis of time (layers are aligned on their last axes)."""
        return self.viewer.dims.ndim - self.layers["reconstruction"].ndim

    @property
    def time(self) -> float | None:
        """The viewer's current time in seconds (None until ready or once a layer of ours
        has gone)."""
        if not self.ready or any(la not in self.viewer.layers for la in self.layers.values()):
            return None  # e.g. the viewer is closing
        return float(self.viewer.dims.point[self.time_axis])

    def set_upsample(self, upsample: int) -> None:
        """Change K: the same layers get K steps per frame (new data and time scale)."""
        t = self.time
        self.session.set_upsample(upsample)
        layers, self._buffers = scrub_layers(self.session)
        self._pending = []
        for data, kwargs, _ in layers:  # cheaper than new layers (no new Qt controls)
            layer = self.layers.get(kwargs["metadata"]["cst_scrub"])
            if layer is None:  # not added yet
                self._pending.append((data, kwargs))
                continue
            _point(layer, data, kwargs)
        if t is not None:
            self.viewer.dims.set_point(self.time_axis, t)
        self._requested = None
        self._on_point()

    def _on_point(self, event: Any = None) -> None:
        t = self.time
        if t is None or t == self._requested:
            return
        self._requested = t
        self.plot.set_cursor(t)
        self._frames.request(t)
        trace = self.plot.trace
        outside = trace is not None and not trace.times[0] <= t <= trace.times[-1]
        if self.selection is not None and outside:
            self._traces.request((self.selection, t))

    def _show_frames(self, frames: Frames) -> None:
        if self.time is None:  # closed meanwhile
            return
        for role in ROLES:
            self._buffers[role][...] = frames.image(role)
            self.layers[role].refresh()
        self.shown = frames
        lo, hi = self.scrubbed or (frames.time, frames.time)
        self.scrubbed = (min(lo, frames.time), max(hi, frames.time))
        step = (frames.time - self.session.frame_times[frames.frame]) * self.session.fs
        self.readout = f"t = {frames.time:.4f} s (frame {frames.frame} {step:+.2f})"
        if self.on_readout is not None:
            self.on_readout(self.readout)

    # ---- selection -----------------------------------------------------------------

    def select(self, selection: Selection) -> None:
        """Plot ``selection``'s trace around the current time."""
        self.selection = selection
        if self.time is not None:
            self._traces.request((selection, self.time))

    def select_at(self, position: tuple[float, ...]) -> Selection | None:
        """Select what the image under a world position shows (any of the three panels)."""
        ndim = len(self.session.frame_shape)
        for layer in self.layers.values():
            data = np.asarray(layer.world_to_data(position[-layer.ndim :]))[-ndim:]
            selection = self.session.channel_at(tuple(int(i) for i in np.round(data)))
            if selection is not None:
                self.select(selection)
                return selection
        return None

    def _on_click(self, viewer: Any, event: Any) -> Any:
        if event.button != 1:
            return
        start = np.asarray(event.pos, dtype=float)
        yield
        while event.type == "mouse_move":
            yield
        if np.hypot(*(np.asarray(event.pos, dtype=float) - start)) <= CLICK_PIXELS:
            self.select_at(tuple(event.position))

    def _on_label(self, event: Any = None) -> None:
        label = int(event.source.selected_label)
        if 0 < label <= self.session.windows.n_channels:
            self.select(self.session.roi_selection(label - 1))

    def _show_trace(self, trace: Trace) -> None:
        t = self.time
        if t is not None and trace.selection == self.selection:
            var = self.session.windows.var
            self.plot.show_trace(trace, unit="ΔF/F" if var == "dff" else var)
            self.plot.set_cursor(t)

    # ---- teardown ------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether layers are still being added or a model query is running or waiting."""
        return not self._ready or self._frames.busy or self._traces.busy

    def _release_window(self) -> None:
        if self._held is not None:
            self._held.setUpdatesEnabled(True)
            self._held = None

    def detach(self) -> list[Layer]:
        """Disconnect from the viewer and hand over the layers for the next scrubber to
        reuse: napari runs a full garbage collection for each layer it removes (~0.3 s
        each in a process that holds torch and a model)."""
        self._closed, self._ready, self._pending = True, False, []
        self._release_window()
        self.viewer.dims.events.point.disconnect(self._on_point)
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        for layer in self._labels_layers:
            layer.events.selected_label.disconnect(self._on_label)
        layers = [*self._reuse.values(), *self.layers.values()]
        self.layers, self._reuse = {}, {}
        return layers

    def close(self) -> None:
        """Disconnect from the viewer and remove the session's layers."""
        for layer in self.detach():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)


def _point(layer: Layer, data: np.ndarray, kwargs: dict[str, Any]) -> None:
    """Show new scrubbing data (another K or session) in an existing scrubbing layer: far
    cheaper than a new layer (no Qt controls, vispy node or removal)."""
    layer.metadata = kwargs["metadata"]
    layer.data = data
    for key in ("name", "scale", "translate", "contrast_limits"):
        setattr(layer, key, kwargs[key])
