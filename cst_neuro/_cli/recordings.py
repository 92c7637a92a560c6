"""Commands that make and inspect recordings: ``ingest``, ``info``, ``simulate``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cst_neuro._cli.common import handle_errors


class Format(StrEnum):
    auto = "auto"
    suite2p = "suite2p"
    traces = "traces"
    nwb = "nwb"
    movie = "movie"
    caiman = "caiman"


class Baseline(StrEnum):
    maximin = "maximin"
    percentile = "percentile"
    prctile = "prctile"
    none = "none"


class Layout(StrEnum):
    suite2p_v0 = "suite2p-v0"
    suite2p_v1 = "suite2p-v1"
    movie = "movie"
    zarr = "zarr"


@handle_errors
def ingest(
    source: Annotated[Path, typer.Argument(help="Suite2p folder, traces, NWB, movie, CaImAn.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output zarr store.")],
    format: Annotated[Format, typer.Option(help="Input format (auto-detected).")] = Format.auto,
    fs: Annotated[float | None, typer.Option(help="Sampling rate in Hz (overrides file).")] = None,
    time_axis: Annotated[
        int | None, typer.Option(min=0, max=1, help="Traces: 0 = time x roi, 1 = roi x time.")
    ] = None,
    neuropil: Annotated[float | None, typer.Option(help="Neuropil coefficient r.")] = None,
    baseline: Annotated[
        Baseline, typer.Option(help="ΔF/F baseline; 'none' when the input is ΔF/F already.")
    ] = Baseline.maximin,
    all_rois: Annotated[bool, typer.Option(help="Keep all ROIs, not only cells.")] = False,
    grid_bin: Annotated[
        int | None, typer.Option(min=1, help="Also store a grid binned N x N pixels.")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Traces: which array in the file (e.g. dF_traces).")
    ] = None,
    dims: Annotated[
        tuple[int, int] | None, typer.Option(help="CaImAn: image size D1 D2 (rows, columns).")
    ] = None,
    series: Annotated[
        str | None, typer.Option(help="NWB: which RoiResponseSeries (name or Container/name).")
    ] = None,
    swap_xy: Annotated[
        bool | None,
        typer.Option("--swap-xy/--no-swap-xy", help="NWB: force the pixel-mask x/y order."),
    ] = None,
    run_suite2p: Annotated[
        bool, typer.Option(help="Run Suite2p (extra 'suite2p') on a raw movie first.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output store.")] = False,
) -> None:
    """Convert a recording into a cst-neuro zarr store (with ΔF/F)."""
    from cst_neuro.ingest import ingest as run_ingest

    options = dict(
        format=format.value,
        fs=fs,
        time_axis=time_axis,
        neuropil=neuropil,
        baseline=baseline.value,
        all_rois=all_rois,
        grid_bin=grid_bin,
        key=key,
        dims=dims,
        series=series,
        swap_xy=swap_xy,
    )
    if run_suite2p:
        from cst_neuro.io.run_suite2p import run_suite2p as run_s2p

        source = run_s2p(source, output.parent / f"{output.stem}_suite2p", fs=fs)
        options["format"] = "suite2p"
    path = run_ingest(source, output, overwrite=overwrite, progress=True, **options)
    typer.echo(f"wrote {path}")


@handle_errors
def info(store: Annotated[Path, typer.Argument(help="A zarr store written by cst-neuro.")]) -> None:
    """Print a human summary of a store: dims, rate, duration, source, ΔF/F method."""
    from cst_neuro.store import open_store
    from cst_neuro.summary import describe

    typer.echo(describe(open_store(store), path=store))


@handle_errors
def simulate(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (or .zarr/.tif).")],
    layout: Annotated[Layout, typer.Option(help="What to write.")] = Layout.suite2p_v1,
    rois: Annotated[int, typer.Option(min=1, help="Number of ROIs.")] = 200,
    frames: Annotated[int, typer.Option(min=2, help="Number of frames.")] = 3000,
    fs: Annotated[float, typer.Option(min=0.001, help="Frame rate in Hz.")] = 30.0,
    planes: Annotated[int, typer.Option(min=1, help="Number of imaging planes.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Write a simulated recording with known ground truth (Suite2p folder, TIFF or zarr)."""
    from cst_neuro.simulate import write_simulation

    path = write_simulation(
        output,
        layout=layout.value,
        n_rois=rois,
        n_frames=frames,
        fs=fs,
        n_planes=planes,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {path}")
