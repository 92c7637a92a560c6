"""napari scrubbing benchmark: one sub-frame frame from a cached context, and its UI cost.

For two recordings, a 1,000-ROI recording with footprints (frames painted into the
label image) and a 128×128 movie (4×4 patches), a model of the size ``fit`` picks for
them (weights untrained: ``max_epochs=0``; the cost does not depend on the values):

1. ``frame``: ``ScrubSession.frames_at(t)`` at sub-frame times whose two (blended,
   half-overlapping) window contexts are cached: two decoder passes, the nearest observed
   frame, the difference, the images (target ≤ 50 ms);
2. ``decode``: the model query alone (``Reconstructor.predict`` at one time);
3. ``new window``: ``frames_at`` half a window further on each time, so one of its two
   windows must first be encoded (runs in a worker thread in the viewer);
4. with ``--viewer`` (needs a display, e.g. ``xvfb-run``), the UI thread's share in a
   real napari viewer that shows the recording (as the widget requires): showing a
   finished frame (copy into the three layers, refresh), drawing the trace plot
   (matplotlib Agg) and changing K; and attaching a model through the dock widget's
   ``use_session``, as after training or loading one (the scrubber adds its three layers
   over several event-loop turns, then shows the first frame; the first attach also docks
   the trace plot), measured as the longest gap between ticks of a 1 ms heartbeat timer
   on the UI thread, i.e. the longest time the UI could not respond.

Medians over ``--repeats`` runs after a warm-up.

    python benchmarks/bench_napari.py --threads 2
    xvfb-run -a python benchmarks/bench_napari.py --threads 2 --viewer
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from cst_neuro.scrub import ScrubSession
from cst_neuro.simulate import SimulationConfig, simulate
from cst_neuro.train import FitConfig, fit

K = 4


def median_ms(fn, args: list) -> float:
    """Median milliseconds of ``fn(a)`` over the arguments, after one warm-up call."""
    fn(args[0])
    times = []
    for a in args:
        start = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def roi_recording(n_rois: int, n_frames: int) -> xr.Dataset:
    """Simulated ROI traces (used as ΔF/F) with footprints in a 512 × 512 field of view."""
    sim = simulate(SimulationConfig(n_rois=n_rois, n_frames=n_frames, fov=(512, 512), seed=0))
    ds = sim.recording()
    return ds.assign(dff=ds["F"].load())


def movie_recording(n_frames: int) -> xr.Dataset:
    """A simulated 128 × 128 movie."""
    sim = simulate(SimulationConfig(n_rois=60, n_frames=n_frames, fov=(128, 128), seed=0))
    return sim.recording()[["valid", "mean_image"]].assign(movie=(("time", "y", "x"), sim.movie()))


def session_for(ds: xr.Dataset, var: str, folder: Path) -> ScrubSession:
    path = folder / f"{var}.pt"
    fit(ds, path, config=FitConfig(var=var, max_epochs=0), device="cpu")
    return ScrubSession.from_checkpoint(path, ds, upsample=K)


def measure(session: ScrubSession, repeats: int, viewer: bool) -> dict:
    fs, n, half = session.fs, session.frame_times.size, session.windows.window // 2
    pair = n - half  # cached: the windows around this frame pair are encoded once
    sub = [session.frame_times[pair] + (j % (K - 1) + 1) / (K * fs) for j in range(repeats)]
    session.frames_at(sub[0])
    # forward by half a window each time: one new window to encode (of the two blended)
    fresh = [session.frame_times[half * k + half // 2] + 0.5 / fs for k in range(repeats + 1)]
    out = {
        "frame shape": list(session.frame_shape),
        "channels": session.windows.n_channels,
        "model parameters": sum(p.numel() for p in session.model.parameters()),
        "model": {k: getattr(session.model.config, k) for k in ("d_model", "n_layers")},
        "frame ms (cached context)": median_ms(session.frames_at, sub),
        "decode ms (cached context)": median_ms(
            lambda t: session.reconstructor.predict(np.array([t])), sub
        ),
        "frame ms (new window: encode + decode)": median_ms(session.frames_at, fresh),
    }
    if viewer:
        out.update(ui_cost(session, sub))
    return out


def longest_block_ms(action: Callable[[], object], done: Callable[[], bool]) -> float:
    """The longest the UI thread went without serving a 1 ms timer, from ``action()`` until
    ``done()`` (the event loop runs meanwhile)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    ticks = [time.perf_counter()]
    heartbeat = QTimer()
    heartbeat.setInterval(1)
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    heartbeat.start()
    action()
    while not done():
        QApplication.processEvents()
    heartbeat.stop()
    ticks.append(time.perf_counter())
    return 1000 * float(np.diff(ticks).max())


def ui_cost(session: ScrubSession, times: list[float]) -> dict[str, float]:
    """Milliseconds of the UI thread's work in a real viewer (medians where repeated)."""
    import napari
    from napari.layers import Layer
    from qtpy.QtWidgets import QApplication

    from cst_neuro.layers import recording_layers

    viewer = napari.Viewer(show=True)
    for layer in recording_layers(session.ds):
        viewer.add_layer(Layer.create(*layer))
    _, widget = viewer.window.add_plugin_dock_widget("cst-neuro", "CST scrubber")
    widget.add_recording(session.ds)
    end = time.perf_counter() + 0.5  # the viewer as a user sees it before loading a model
    while time.perf_counter() < end:
        QApplication.processEvents()
    blocks = [  # the first docks the trace plot; each later one replaces the scrubber
        longest_block_ms(
            lambda: widget.use_session(session),
            lambda: widget.scrubber.ready and not widget.scrubber.busy,
        )
        for _ in range(3)
    ]
    scrubber, plot = widget.scrubber, widget.plot
    frames = [session.frames_at(t) for t in times]
    selection = session.channel_at(tuple(np.argwhere(np.isfinite(frames[0].raw))[0]))
    trace = session.trace(selection, times[0])

    def redraw(_: object) -> None:
        plot.show_trace(trace)
        plot.canvas.draw()

    try:
        return {
            "UI ms: show a frame (copy into 3 layers + refresh)": median_ms(
                scrubber._show_frames, frames
            ),
            "UI ms: draw the trace plot": median_ms(redraw, times[:5]),
            "UI ms: longest block while attaching a model (3 runs)": blocks,
            "UI ms: change K": median_ms(scrubber.set_upsample, [8, 2, 8, 2, 8, 2]),
        }
    finally:
        viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rois", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--viewer", action="store_true", help="also time the UI thread's part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} ({args.threads} threads, {platform.machine()})",
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rois = session_for(roi_recording(args.rois, args.frames), "dff", folder)
        report[f"{args.rois} ROIs"] = measure(rois, args.repeats, args.viewer)
        grid = session_for(movie_recording(args.frames), "movie", folder)
        report["128x128 grid"] = measure(grid, args.repeats, args.viewer)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
