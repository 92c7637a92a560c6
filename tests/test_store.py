"""The zarr store: exact round trips, schema checks, atomic and explicit overwrites."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cst_neuro.errors import InputError, OutputError, SchemaError
from cst_neuro.schema import SCHEMA_VERSION, new_recording
from cst_neuro.store import open_store, write_recording


def make_recording(traces: np.ndarray, *, fs: float = 30.0, lazy: bool = False) -> xr.Dataset:
    n_frames, n_rois = traces.shape
    data = da.from_array(traces, chunks=(-1, 7)) if lazy else traces
    return new_recording(
        {"dff": (("time", "roi"), data), "iscell": ("roi", np.arange(n_rois) % 2 == 0)},
        time=np.arange(n_frames) / fs,
        fs=fs,
        source_format="test",
        source_name="unit",
        coords={"roi": np.arange(n_rois) * 3, "roi_y": ("roi", np.linspace(0, 9, n_rois))},
        attrs={"dff_params": json.dumps({"win": 60.0})},
    )


def assert_same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        left, right = a[name].values, b[name].values
        assert left.dtype == right.dtype, name
        np.testing.assert_array_equal(left, right, err_msg=str(name))
    assert a.attrs == b.attrs


float32_traces = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 40), st.integers(1, 12)),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=False),
)


@settings(max_examples=25, deadline=None)
@given(traces=float32_traces, lazy=st.booleans())
def test_round_trip_is_exact(tmp_path_factory: pytest.TempPathFactory, traces, lazy) -> None:
    ds = make_recording(traces, lazy=lazy)
    path = tmp_path_factory.mktemp("rt") / "rec.zarr"
    write_recording(ds, path)
    assert_same(ds.load(), open_store(path).load())


def test_existing_output_needs_overwrite(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "rec.zarr"
    first = make_recording(rng.normal(size=(20, 3)).astype("f4"))
    write_recording(first, path)
    second = make_recording(rng.normal(size=(10, 2)).astype("f4"))
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        write_recording(second, path)
    assert_same(first.load(), open_store(path).load())  # untouched
    write_recording(second, path, overwrite=True)
    assert open_store(path).sizes["time"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["rec.zarr"]  # no leftovers


def test_refuses_to_replace_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(OutputError, match="not a zarr store"):
        write_recording(make_recording(np.zeros((3, 1), "f4")), precious, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_interrupted_write_leaves_nothing_that_opens(tmp_path: Path) -> None:
    def explode(block: np.ndarray) -> np.ndarray:
        if block.shape[0] and block[0, 0] >= 20:  # the first chunks are written, then it dies
            raise RuntimeError("killed mid-write")
        return block

    ramp = np.repeat(np.arange(50, dtype="f4")[:, None], 4, axis=1)
    traces = da.from_array(ramp, chunks=(10, 4)).map_blocks(explode, dtype="f4")
    ds = make_recording(np.ones((50, 4), "f4"))
    ds["dff"] = (("time", "roi"), traces)
    path = tmp_path / "rec.zarr"
    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_recording(ds, path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no such store"):
        open_store(path)


def test_store_without_completion_mark_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "rec.zarr"
    make_recording(np.ones((5, 2), "f4")).to_zarr(path, zarr_format=3, consolidated=False)
    with pytest.raises(SchemaError, match="incomplete"):
        open_store(path)


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    import zarr

    path = tmp_path / "rec.zarr"
    write_recording(make_recording(np.ones((5, 2), "f4")), path)
    zarr.open_group(path, mode="r+").attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match=r"rec.zarr: schema_version 2 is newer.*upgrade"):
        open_store(path)


def test_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(InputError, match=r"x.zarr: not a zarr store"):
        open_store(tmp_path / "x.zarr")


def test_missing_output_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        write_recording(make_recording(np.ones((5, 2), "f4")), tmp_path / "no" / "rec.zarr")
