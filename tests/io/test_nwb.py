"""NWB reader: small ophys files written with pynwb (plain and Suite2p-style), bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb", reason="NWB support needs the nwb extra (pynwb)")

from pynwb.base import Images  # noqa: E402
from pynwb.image import GrayscaleImage  # noqa: E402
from pynwb.ophys import (  # noqa: E402
    DfOverF,
    Fluorescence,
    ImageSegmentation,
    OpticalChannel,
    RoiResponseSeries,
)

from cst_neuro.errors import InputError  # noqa: E402
from cst_neuro.io.nwb import NWBReader  # noqa: E402

READER = NWBReader()
# three ROIs as (x = column, y = row, weight) in the NWB schema's convention
MASKS = [
    [(1, 2, 0.5), (3, 2, 1.5)],
    [(5, 6, 1.0)],
    [(0, 7, 2.0), (2, 7, 2.0), (4, 9, 0.0)],
]


def new_file(session: str = "test session") -> tuple[Any, Any, Any]:
    """An NWBFile with an ophys module and an imaging plane at 20 Hz."""
    nwb = pynwb.NWBFile(
        session_description=session,
        identifier="cst-neuro-test",
        session_start_time=datetime(2024, 1, 1, tzinfo=UTC),
    )
    device = nwb.create_device(name="Microscope")
    channel = OpticalChannel(name="OpticalChannel", description="green", emission_lambda=510.0)
    plane = nwb.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=channel,
        imaging_rate=20.0,
        description="plane",
        device=device,
        excitation_lambda=920.0,
        indicator="GCaMP6s",
        location="V1",
    )
    ophys = nwb.create_processing_module(name="ophys", description="processed")
    return nwb, ophys, plane


def add_rois(ophys: Any, plane: Any, masks: list, *, description: str = "rois") -> Any:
    """A PlaneSegmentation holding ``masks`` (pixel lists, or dense arrays)."""
    seg = ImageSegmentation()
    ophys.add(seg)
    ps = seg.create_plane_segmentation(
        name="PlaneSegmentation", description=description, imaging_plane=plane
    )
    for mask in masks:
        if isinstance(mask, np.ndarray):
            ps.add_roi(image_mask=mask)
        else:
            ps.add_roi(pixel_mask=mask)
    return ps


def add_series(
    ophys: Any, container: type, cname: str, sname: str, region: Any, data: np.ndarray, **timing
) -> None:
    """A container ``cname`` holding one RoiResponseSeries ``sname``."""
    timing = timing or {"rate": 20.0}
    if cname not in ophys.data_interfaces:
        ophys.add(container(name=cname))  # in the file first, so the region's table is linked
    rrs = RoiResponseSeries(name=sname, data=data, rois=region, unit="a.u.", **timing)
    ophys[cname].add_roi_response_series(rrs)


def write(nwb: Any, path: Path) -> Path:
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def plain_file(path: Path, rng: np.random.Generator, **timing) -> tuple[Path, np.ndarray]:
    """Fluorescence/RoiResponseSeries over the three ROIs, 40 frames."""
    nwb, ophys, plane = new_file()
    ps = add_rois(ophys, plane, MASKS)
    region = ps.create_roi_table_region(region=[0, 1, 2], description="all")
    data = rng.standard_normal((40, 3)).astype(np.float32)
    add_series(ophys, Fluorescence, "Fluorescence", "RoiResponseSeries", region, data, **timing)
    return write(nwb, path), data


def suite2p_file(path: Path, rng: np.random.Generator) -> tuple[Path, dict[str, np.ndarray]]:
    """What suite2p.io.nwb.save_nwb writes: (ypix, xpix, lam) in the (x, y, weight) fields."""
    nwb, ophys, plane = new_file(session="suite2p_proc")
    swapped = [[(y, x, w) for x, y, w in mask] for mask in MASKS]
    ps = add_rois(ophys, plane, swapped, description="suite2p output")
    iscell = [[1.0, 0.9], [0.0, 0.1], [1.0, 0.7]]
    ps.add_column("iscell", "two columns - iscell & probcell", data=iscell)
    region = ps.create_roi_table_region(region=[0, 1, 2], description="ROIs for plane0")
    traces = {}
    for cname, var in (("Fluorescence", "F"), ("Neuropil", "Fneu"), ("Deconvolved", "spks")):
        traces[var] = rng.standard_normal((30, 3)).astype(np.float32)
        add_series(ophys, Fluorescence, cname, "plane0", region, traces[var], rate=15.0)
    mean = rng.random((12, 10)).astype(np.float32)  # (Ly, Lx) as Suite2p stores it
    images = Images(name="Backgrounds_0")
    images.add_image(GrayscaleImage(name="meanImg", data=mean))
    ophys.add(images)
    traces["mean_image"] = mean
    return write(nwb, path), traces


def pixels(ds: Any) -> set[tuple[int, int, int, float]]:
    """The footprints as a set of (roi position, y, x, weight)."""
    cols = [ds[k].values for k in ("footprint_roi", "footprint_y", "footprint_x")]
    weights = ds["footprint_weight"].values
    return {(int(r), int(y), int(x), float(w)) for r, y, x, w in zip(*cols, weights, strict=True)}


EXPECTED = {(0, 2, 1, 0.5), (0, 2, 3, 1.5), (1, 6, 5, 1.0), (2, 7, 0, 2.0), (2, 7, 2, 2.0)}
EXPECTED |= {(2, 9, 4, 0.0)}


# --- plain files ---------------------------------------------------------------------------


def test_fluorescence_with_pixel_masks(tmp_path: Path, rng: np.random.Generator) -> None:
    path, data = plain_file(tmp_path / "plain.nwb", rng)
    assert READER.guess_can_open(path)
    ds = READER.open(path)
    assert isinstance(ds["F"].data, da.Array)
    np.testing.assert_array_equal(ds["F"].values, data)
    assert ds["F"].attrs["trace_kind"] == "fluorescence" and "dff" not in ds
    assert pixels(ds) == EXPECTED
    np.testing.assert_allclose(ds["roi_y"].values, [2.0, 6.0, 7.0])
    np.testing.assert_allclose(ds["roi_x"].values, [2.5, 5.0, 1.0])
    assert ds.attrs["fs"] == 20.0 and ds.attrs["nwb_swap_xy"] == 0
    np.testing.assert_allclose(ds["time"].values[:2], [0.0, 0.05])
    assert ds.attrs["source_version"].startswith("2.")


def test_swap_xy_option_forces_a_swap(tmp_path: Path, rng: np.random.Generator) -> None:
    path, _ = plain_file(tmp_path / "plain.nwb", rng)
    ds = READER.open(path, swap_xy=True)
    assert pixels(ds) == {(r, x, y, w) for r, y, x, w in EXPECTED}


def test_timestamps_and_starting_time(tmp_path: Path, rng: np.random.Generator) -> None:
    t = 5.0 + np.cumsum(rng.uniform(0.09, 0.11, 40))
    path, _ = plain_file(tmp_path / "ts.nwb", rng, timestamps=t)
    ds = READER.open(path)
    np.testing.assert_array_equal(ds["time"].values, t)
    assert ds.attrs["fs"] == pytest.approx(1 / np.median(np.diff(t)))
    path, _ = plain_file(tmp_path / "t0.nwb", rng, rate=10.0, starting_time=3.0)
    ds = READER.open(path, fs=12.0)
    assert ds["time"].values[1] == pytest.approx(3.0 + 1 / 12) and ds.attrs["fs"] == 12.0
    assert READER.open(path)["time"].values[1] == pytest.approx(3.1)


def test_imaging_plane_rate_is_the_last_resort(tmp_path: Path, rng: np.random.Generator) -> None:
    nwb, ophys, plane = new_file()
    ps = add_rois(ophys, plane, MASKS)
    region = ps.create_roi_table_region(region=[0, 1, 2], description="all")
    data = np.ones((1, 3), dtype=np.float32)
    add_series(ophys, Fluorescence, "Fluorescence", "one", region, data, timestamps=[2.0])
    ds = READER.open(write(nwb, tmp_path / "one.nwb"))
    assert ds.attrs["fs"] == 20.0 and list(ds["time"].values) == [2.0]


def test_dff_with_sibling_fluorescence_and_roi_subset(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    nwb, ophys, plane = new_file()
    ps = add_rois(ophys, plane, MASKS)
    region = ps.create_roi_table_region(region=[1, 2], description="two")
    dff, raw = (rng.standard_normal((25, 2)).astype(np.float32) for _ in range(2))
    add_series(ophys, DfOverF, "DfOverF", "RoiResponseSeries", region, dff)
    add_series(ophys, Fluorescence, "Fluorescence", "RoiResponseSeries", region, raw)
    ds = READER.open(write(nwb, tmp_path / "dff.nwb"))
    np.testing.assert_array_equal(ds["dff"].values, dff)
    np.testing.assert_array_equal(ds["F"].values, raw)
    assert list(ds["roi"].values) == [1, 2]
    assert ds.attrs["nwb_series"] == "DfOverF/RoiResponseSeries"
    assert pixels(ds) == {(r - 1, y, x, w) for r, y, x, w in EXPECTED if r > 0}
    ds = READER.open(tmp_path / "dff.nwb", series="Fluorescence")
    assert ds.attrs["nwb_series"] == "Fluorescence/RoiResponseSeries"


def test_image_masks(tmp_path: Path, rng: np.random.Generator) -> None:
    nwb, ophys, plane = new_file()
    masks = [np.zeros((8, 6)) for _ in range(2)]  # (num_x, num_y) per the schema
    masks[0][1, 4], masks[0][3, 4], masks[1][7, 0] = 1.0, 3.0, 2.0
    ps = add_rois(ophys, plane, masks)
    region = ps.create_roi_table_region(region=[0, 1], description="all")
    add_series(ophys, Fluorescence, "Fluorescence", "s", region, np.zeros((5, 2), np.float32))
    ds = READER.open(write(nwb, tmp_path / "img.nwb"))
    assert pixels(ds) == {(0, 4, 1, 1.0), (0, 4, 3, 3.0), (1, 0, 7, 2.0)}
    assert (ds.sizes["y"], ds.sizes["x"]) == (6, 8)
    np.testing.assert_allclose(ds["roi_x"].values, [2.5, 7.0])


# --- Suite2p's export ----------------------------------------------------------------------


def test_suite2p_export_is_swapped_back(tmp_path: Path, rng: np.random.Generator) -> None:
    path, traces = suite2p_file(tmp_path / "ophys.nwb", rng)
    ds = READER.open(path)
    assert ds.attrs["suite2p_nwb"] == 1 and ds.attrs["nwb_swap_xy"] == 1
    assert pixels(ds) == EXPECTED
    for var in ("F", "Fneu", "spks"):
        np.testing.assert_array_equal(ds[var].values, traces[var])
    assert list(ds["iscell"].values) == [True, False, True]
    np.testing.assert_allclose(ds["cell_prob"].values, [0.9, 0.1, 0.7])
    np.testing.assert_array_equal(ds["mean_image"].values, traces["mean_image"])
    assert (ds.sizes["y"], ds.sizes["x"]) == (12, 10) and ds.attrs["fs"] == 15.0


def test_suite2p_swap_can_be_turned_off(tmp_path: Path, rng: np.random.Generator) -> None:
    path, _ = suite2p_file(tmp_path / "ophys.nwb", rng)
    ds = READER.open(path, swap_xy=False)
    assert pixels(ds) == {(r, x, y, w) for r, y, x, w in EXPECTED}


def test_several_planes_need_a_series_name(tmp_path: Path, rng: np.random.Generator) -> None:
    nwb, ophys, plane = new_file()
    ps = add_rois(ophys, plane, MASKS)
    regions = [ps.create_roi_table_region(region=r, description="p") for r in ([0, 1], [2])]
    for k, region in enumerate(regions):
        data = np.full((10, len(region.data)), k, np.float32)
        add_series(ophys, Fluorescence, "Fluorescence", f"plane{k}", region, data)
    path = write(nwb, tmp_path / "planes.nwb")
    with pytest.raises(InputError, match=r"planes\.nwb: several F series .*plane0.*--series"):
        READER.open(path)
    ds = READER.open(path, series="plane1")
    assert list(ds["roi"].values) == [2] and float(ds["F"].values.max()) == 1.0
    with pytest.raises(InputError, match=r"--series 'plane7' matches none"):
        READER.open(path, series="plane7")


# --- bad input -----------------------------------------------------------------------------


def test_non_monotonic_timestamps(tmp_path: Path, rng: np.random.Generator) -> None:
    t = np.arange(40) / 10.0
    t[10] = t[9]
    path, _ = plain_file(tmp_path / "bad_t.nwb", rng, timestamps=t)
    with pytest.raises(InputError, match=r"bad_t\.nwb: timestamps .* not finite and increasing"):
        READER.open(path)


def test_zero_frames(tmp_path: Path) -> None:
    nwb, ophys, plane = new_file()
    ps = add_rois(ophys, plane, MASKS)
    region = ps.create_roi_table_region(region=[0, 1, 2], description="all")
    add_series(ophys, Fluorescence, "Fluorescence", "s", region, np.zeros((0, 3), np.float32))
    with pytest.raises(InputError, match=r"empty\.nwb: series Fluorescence/s has no frames"):
        READER.open(write(nwb, tmp_path / "empty.nwb"))


def test_no_ophys_module(tmp_path: Path) -> None:
    nwb = pynwb.NWBFile(
        session_description="x",
        identifier="y",
        session_start_time=datetime(2024, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(InputError, match=r"raw\.nwb: no processing\['ophys'\] module"):
        READER.open(write(nwb, tmp_path / "raw.nwb"))


def test_not_an_nwb_file(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "plain.nwb", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match=r"plain\.nwb: not a readable NWB file"):
        READER.open(tmp_path / "plain.nwb")
    (tmp_path / "text.nwb").write_text("hello")
    with pytest.raises(InputError, match=r"text\.nwb: not a readable NWB file"):
        READER.open(tmp_path / "text.nwb")
    assert not READER.guess_can_open(tmp_path / "text.nwb")
    with pytest.raises(InputError, match=r"gone\.nwb: no such file"):
        READER.open(tmp_path / "gone.nwb")


def test_guess_can_open_h5_with_nwb_version(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["nwb_version"] = "2.8.0"
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["data"] = np.zeros(3)
    assert READER.guess_can_open(tmp_path / "x.h5")
    assert not READER.guess_can_open(tmp_path / "y.h5")
