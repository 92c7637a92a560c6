"""The ``view`` command: a recording (and a model) in napari with the CST scrubber docked."""

from __future__ import annotations

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
        Path | None, typer.Option("--model", help="A model written by cst-neuro fit.")
    ] = None,
    upsample: Annotated[
        int, typer.Option("-k", "--upsample", min=1, help="K: time-slider positions per frame.")
    ] = 4,
) -> None:
    """Open a recording in napari; with --model, scrub its reconstruction between frames."""
    _widget = open_viewer(store, model, upsample=upsample)  # kept open until the app quits
    import napari

    napari.run()


def open_viewer(store: Path, model: Path | None, *, upsample: int) -> Any:
    """A napari viewer showing ``store``'s layers; returns its docked CST widget.

    Everything that can fail on bad input (opening the recording, loading the model and
    binding it to the recording) happens before any window opens.
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
    viewer = napari.Viewer(title=f"cst-neuro: {store.name}")
    for layer in recording_layers(ds):
        viewer.add_layer(Layer.create(*layer))
    _, widget = viewer.window.add_plugin_dock_widget("cst-neuro", "CST scrubber")
    widget.add_recording(ds)
    if session is not None:
        widget.use_loaded(session, model)
    return widget
