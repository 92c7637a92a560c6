"""The ``view`` command: a recording (and a model) in napari with the CST scrubber docked."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cst_neuro._cli.common import fail, handle_errors


@handle_errors
def view(
    store: Annotated[
        Path, typer.Argument(help="A zarr store written by cst-neuro, or any source ingest reads.")
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="A model written by cst-neuro fit (a prior from cst-neuro pretrain is bound "
            "zero-shot). Default: the calcium prior, bound zero-shot once the window is open.",
        ),
    ] = None,
    upsample: Annotated[
        int, typer.Option("-k", "--upsample", min=1, help="K: time-slider positions per frame.")
    ] = 4,
) -> None:
    """Open a recording in napari and scrub its reconstruction between frames: the calcium
    prior's, zero-shot (Train in the widget refines it), or that of --model."""
    _widget = open_viewer(store, model, upsample=upsample)  # kept open until the app quits
    import napari

    napari.run()


def open_viewer(store: Path, model: Path | None, *, upsample: int) -> Any:
    """A napari viewer showing ``store``'s layers; returns its docked CST widget.

    Everything that can fail on bad input (opening the recording, loading the model and
    binding it to the recording) happens before any window opens. Without a model the
    widget binds the calcium prior in a worker (a failure is a line in the widget).
    """
    from cst_neuro.layers import open_for_viewing, recording_layers
    from cst_neuro.scrub import ScrubSession

    try:
        import napari
        from napari.layers import Layer
    except ImportError as e:
        raise fail(f"napari is not installed ({e}); pip install 'cst-neuro[napari]'") from None

    ds = open_for_viewing(store)
    session = None if model is None else ScrubSession.from_checkpoint(model, ds, upsample=upsample)
    problem = display_problem()
    if problem is not None:  # Qt would abort the process (SIGABRT) instead of raising
        raise fail(f"no display is available ({problem}); view needs a screen (ssh -X, xvfb-run)")
    viewer = napari.Viewer(title=f"cst-neuro: {store.name}")
    for layer in recording_layers(ds):
        viewer.add_layer(Layer.create(*layer))
    _, widget = viewer.window.add_plugin_dock_widget("cst-neuro", "CST scrubber")
    widget.add_recording(ds)
    widget.upsample_box.setValue(upsample)  # K of the zero-shot binding, started after this
    if session is not None:
        widget.use_loaded(session, model)
    return widget


HEADLESS_QT = ("offscreen", "minimal", "vnc", "linuxfb", "eglfs")  # Qt platforms without X


def display_problem() -> str | None:
    """Why Qt could not open a window here (None where it can, or cannot be told).

    On Linux without ``DISPLAY``/``WAYLAND_DISPLAY`` (or with an X display nobody serves)
    Qt's xcb plugin aborts the process; a headless ``QT_QPA_PLATFORM`` needs no display.
    """
    if not sys.platform.startswith("linux"):
        return None
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in HEADLESS_QT:
        return None
    if os.environ.get("WAYLAND_DISPLAY"):
        return None
    display = os.environ.get("DISPLAY", "")
    if not display:
        return "DISPLAY is not set"
    return None if _x_server_answers(display) else f"no X server answers at DISPLAY={display}"


def _x_server_answers(display: str) -> bool:
    """Whether an X server accepts connections at ``display`` (``[host]:N[.screen]``)."""
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return False
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{number}"
        for address in (path, "\0" + path):  # the socket file, or Linux's abstract name
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                try:
                    sock.connect(address)
                    return True
                except OSError:
                    continue
        return False
    try:
        socket.create_connection((host, 6000 + int(number)), timeout=1.0).close()
    except OSError:
        return False
    return True
