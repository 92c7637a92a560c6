"""The trace plot docked by the CST widget: one ROI (or grid pixel) over time.

A matplotlib figure on Qt (``FigureCanvasQTAgg``) showing a ``cst_neuro.scrub.Trace``:
the observed samples (filled; hollow where the model never trained on the frame), the
model's continuous reconstruction, optional interpolation baselines (linear, PCHIP) and
a vertical cursor at the viewer's current time. Moving the cursor only moves one line
and asks for a redraw when Qt is idle, so scrubbing stays cheap.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget

from cst_neuro.scrub import Trace

BASELINE_STYLES = {"linear": ":", "PCHIP": "--"}


PROMPT = "click an ROI to plot its trace"


class TracePlot(QWidget):
    """Observed samples, reconstruction, baselines and a time cursor for one selection."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(6, 2.2), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(160)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.axes = self.figure.add_subplot()
        self.axes.set_xlabel("time (s)")
        self.axes.set_title(PROMPT, fontsize="medium")
        self.lines = {
            "reconstruction": self.axes.plot([], [], "-", color="C0", lw=1.5, label="CST")[0],
            "observed": self.axes.plot([], [], "o", color="k", ms=3.5, label="observed")[0],
            "held out": self.axes.plot(
                [], [], "o", mfc="none", mec="C3", ms=4.5, label="held out (validation)"
            )[0],
        }
        for name, style in BASELINE_STYLES.items():
            self.lines[name] = self.axes.plot([], [], style, color="0.45", lw=1, label=name)[0]
        self.time_line = self.axes.axvline(np.nan, color="C1", lw=1)  # not QWidget.cursor
        self.trace: Trace | None = None
        self._baselines = True

    def show_trace(self, trace: Trace, *, unit: str = "") -> None:
        """Draw ``trace`` (rescaling the axes to it)."""
        self.trace = trace
        held = trace.held_out
        self.lines["observed"].set_data(trace.observed_times[~held], trace.observed_values[~held])
        self.lines["held out"].set_data(trace.observed_times[held], trace.observed_values[held])
        self.lines["reconstruction"].set_data(trace.times, trace.values)
        for name in BASELINE_STYLES:
            values = trace.baselines.get(name)
            self.lines[name].set_data(
                trace.times, np.full(trace.times.size, np.nan) if values is None else values
            )
        self.axes.set_title(trace.selection.label, fontsize="medium")
        self.axes.set_ylabel(unit)
        self.axes.relim()
        self.axes.autoscale_view()
        self.axes.set_xlim(trace.times[0], trace.times[-1])
        self.set_baselines_visible(self._baselines)

    def clear(self) -> None:
        """Show no trace (the model or recording changed)."""
        self.trace = None
        for line in self.lines.values():
            line.set_data([], [])
        self.axes.set_title(PROMPT, fontsize="medium")
        self.canvas.draw_idle()

    def set_baselines_visible(self, visible: bool) -> None:
        """Show or hide the interpolation baselines (the legend lists what is drawn)."""
        self._baselines = bool(visible)
        for name in BASELINE_STYLES:
            self.lines[name].set_visible(self._baselines)
        shown = [
            line for line in self.lines.values() if line.get_visible() and np.size(line.get_xdata())
        ]
        if shown:
            self.axes.legend(
                handles=shown, loc="upper right", fontsize="x-small", ncols=5, frameon=False
            )
        self.canvas.draw_idle()

    def set_cursor(self, t: float) -> None:
        """Move the time cursor to ``t`` seconds."""
        self.time_line.set_xdata([t, t])
        self.canvas.draw_idle()

    @property
    def cursor_time(self) -> float:
        return float(np.asarray(self.time_line.get_xdata())[0])
