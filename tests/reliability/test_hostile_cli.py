"""Broken inputs, malicious checkpoints and path tricks for every command.

Stores, configs, checkpoints and query-time files are damaged one way each; every case
must exit 2 with one ``error:`` line naming the offending file and no traceback, run no
code, and write no output. Readers' own inputs are covered by test_hostile_inputs.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cst_neuro._cli.app import app
from cst_neuro.checkpoint import FORMAT
from cst_neuro.train import partial_path

from ._inputs import assert_clean_cli_error, cli

pytestmark = pytest.mark.timeout(120)


class _Call:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# --- damaged stores (info, fit, reconstruct read them) -------------------------------------


def _truncate_json(store: Path) -> None:
    meta = store / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])


def _drop_chunk(store: Path) -> None:
    chunks = [p for p in (store / "dff" / "c").rglob("*") if p.is_file()]
    chunks[0].unlink()


def _flip_chunk(store: Path) -> None:
    chunk = next(p for p in (store / "dff" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _attr(**attrs) -> Callable[[Path], None]:
    def edit(store: Path) -> None:
        group = zarr.open_group(store, mode="r+")
        for key, value in attrs.items():
            if value is None:
                del group.attrs[key]
            else:
                group.attrs[key] = value

    return edit


def _json(path: str, **changes) -> Callable[[Path], None]:
    """Edit a zarr.json of the store by hand (``attributes.fs`` = ``attributes`` → ``fs``)."""

    def edit(store: Path) -> None:
        meta_path = store / path / "zarr.json"
        meta = json.loads(meta_path.read_text())
        for dotted, value in changes.items():
            *parents, key = dotted.split("__")
            target = meta
            for parent in parents:
                target = target[parent]
            target[key] = value
        meta_path.write_text(json.dumps(meta))

    return edit


STORE_CASES = {
    "fs-text": _json(".", attributes__fs="thirty"),
    "fs-null": _json(".", attributes__fs=None),
    "fs-absurd": _json(".", attributes__fs=1e300),
    "nplanes-text": _json(".", attributes__nplanes="two"),
    "dff-params-not-json": _json(".", attributes__dff_params="{broken"),
    "chunk-shape-negative": _json("dff", chunk_grid__configuration__chunk_shape=[0, -3]),
    "chunk-shape-text": _json("dff", chunk_grid__configuration__chunk_shape="big"),
    "array-shape-text": _json("dff", shape=["a", 3]),
    "array-dtype-unknown": _json("dff", data_type="complex999"),
    "array-codec-unknown": _json("dff", codecs=[{"name": "nope"}]),
    "zarr-json-truncated": _truncate_json,
    "chunk-file-missing": _drop_chunk,
    "chunk-bit-flipped": _flip_chunk,
    "never-completed": _attr(cst_neuro_complete=None),
    "schema-from-the-future": _attr(schema_version=99),
    "schema-version-text": _attr(schema_version="one"),
    "fs-negative": _attr(fs=-30.0),
    "no-fs": _attr(fs=None),
    "zarr-json-is-a-folder": lambda s: (s / "zarr.json").unlink() or (s / "zarr.json").mkdir(),
}


@pytest.mark.parametrize("case", sorted(STORE_CASES))
@pytest.mark.parametrize("command", ["info", "fit", "reconstruct"])
def test_damaged_store(trained, tmp_path, case: str, command: str) -> None:
    store = tmp_path / "rec.zarr"
    shutil.copytree(trained["store"], store)
    STORE_CASES[case](store)
    args = {
        "info": [store],
        "fit": [store, "-o", tmp_path / "m.pt", "--config", trained["config"]],
        "reconstruct": [trained["model"], store, "-o", tmp_path / "up.zarr", "--upsample", 2],
    }[command]
    code, out, err = cli(command, *args)
    if command == "info" and case == "chunk-bit-flipped":
        assert code == 0, err  # info reads metadata only; the damage is caught on reading
        return
    assert_clean_cli_error(code, out, err, "rec.zarr")
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "up.zarr").exists()


# --- malicious and damaged checkpoints -----------------------------------------------------


def _model_state(trained) -> dict:
    return torch.load(trained["model"], weights_only=True)


def _payload_torch(path: Path, marker: Path, trained) -> None:
    torch.save({"format": FORMAT, "kind": "model", "x": _Call(os.system, f"touch {marker}")}, path)


def _payload_pickle(path: Path, marker: Path, trained) -> None:
    path.write_bytes(pickle.dumps(_Call(os.system, f"touch {marker}")))


def _payload_in_state(path: Path, marker: Path, trained) -> None:
    state = _model_state(trained)
    state["normalizer"]["mean"] = _Call(os.system, f"touch {marker}")
    torch.save(state, path)


def _edited(change: Callable[[dict], None]) -> Callable[[Path, Path, object], None]:
    def write(path: Path, marker: Path, trained) -> None:
        state = _model_state(trained)
        change(state)
        torch.save(state, path)

    return write


def _first_weight_shape(state: dict) -> None:
    name = next(iter(state["state_dict"]))
    state["state_dict"][name] = torch.zeros(3, 3, 3)


CHECKPOINT_CASES = {
    "payload-in-torch-zip": _payload_torch,
    "payload-legacy-pickle": _payload_pickle,
    "payload-inside-normalizer": _payload_in_state,
    "truncated": lambda p, m, t: p.write_bytes(t["model"].read_bytes()[:300]),
    "zero-length": lambda p, m, t: p.write_bytes(b""),
    "text": lambda p, m, t: p.write_text("not a model"),
    "no-model-config": _edited(lambda s: s.pop("model_config")),
    "unknown-model-setting": _edited(lambda s: s["model_config"].update(bogus=1)),
    "negative-width": _edited(lambda s: s["model_config"].update(d_model=-4)),
    "weights-wrong-shape": _edited(_first_weight_shape),
    "weights-missing": _edited(lambda s: s["state_dict"].clear()),
    "no-normalizer": _edited(lambda s: s.pop("normalizer")),
    "normalizer-text": _edited(lambda s: s.update(normalizer="x")),
    "no-data-section": _edited(lambda s: s.pop("data")),
    "other-variable": _edited(lambda s: s["data"].update(var="grid")),
    "other-channel-count": _edited(lambda s: s["data"].update(n_channels=999)),
    "progress-not-model": _edited(lambda s: s.update(kind="progress")),
    "newer-format": _edited(lambda s: s.update(format_version=99)),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_reconstruct_with_a_bad_model(trained, tmp_path, case: str) -> None:
    model, marker = tmp_path / "model.pt", tmp_path / "pwned"
    CHECKPOINT_CASES[case](model, marker, trained)
    out = tmp_path / "up.zarr"
    code, stdout, err = cli("reconstruct", model, trained["store"], "-o", out, "--upsample", 2)
    assert not marker.exists(), "a checkpoint ran code"
    assert_clean_cli_error(code, stdout, err, "model.pt" if case != "other-variable" else "")
    assert not out.exists()


@pytest.mark.parametrize("case", ["payload-in-torch-zip", "payload-legacy-pickle", "truncated"])
def test_fit_resume_from_a_bad_progress_file(trained, tmp_path, case: str) -> None:
    out, marker = tmp_path / "m.pt", tmp_path / "pwned"
    CHECKPOINT_CASES[case](partial_path(out), marker, trained)
    code, stdout, err = cli(
        "fit", trained["store"], "-o", out, "--config", trained["config"], "--resume"
    )
    assert not marker.exists(), "a progress file ran code"
    assert_clean_cli_error(code, stdout, err, ".m.pt.partial")
    assert not out.exists()


# --- configs and query times ---------------------------------------------------------------

CONFIGS = {
    "batch-size-zero": "batch_size = 0",
    "window-text": "window = 'abc'",
    "window-one": "window = 1",
    "lr-negative": "lr = -1.0",
    "epochs-float": "max_epochs = 2.5",
    "val-fraction-one": "val_fraction = 1.0",
    "unknown-setting": "windw = 16",
    "model-negative-width": "[model]\nd_model = -4",
    "model-heads-do-not-divide": "[model]\nd_model = 10\nn_heads = 3",
    "model-unknown": "[model]\nbogus = 1",
    "model-not-a-table": "model = 3",
    "not-toml": "window = = 3",
    "binary": "\x00\x01\x02",
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_fit_with_a_bad_config(trained, tmp_path, case: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(CONFIGS[case])
    out = tmp_path / "m.pt"
    code, stdout, err = cli("fit", trained["store"], "-o", out, "--config", config)
    assert_clean_cli_error(code, stdout, err, "bad.toml")
    assert not out.exists()


TIMES = {
    "two-d": np.zeros((3, 3)),
    "nan": np.array([0.0, np.nan, 1.0]),
    "decreasing": np.array([2.0, 1.0]),
    "empty": np.zeros(0),
    "text": np.array(["a", "b"]),
}


@pytest.mark.parametrize("case", sorted(TIMES))
def test_reconstruct_with_bad_times(trained, tmp_path, case: str) -> None:
    times = tmp_path / "times.npy"
    np.save(times, TIMES[case])
    out = tmp_path / "up.zarr"
    code, stdout, err = cli(
        "reconstruct", trained["model"], trained["store"], "-o", out, "--times", times
    )
    assert_clean_cli_error(code, stdout, err, "times.npy")
    assert not out.exists()


# --- path tricks ---------------------------------------------------------------------------


def test_output_is_the_input_store(trained, tmp_path) -> None:
    store = tmp_path / "rec.zarr"
    shutil.copytree(trained["store"], store)
    before = sorted(p.name for p in store.rglob("*"))
    for args in (
        ["reconstruct", trained["model"], store, "-o", store, "--upsample", 2, "--overwrite"],
        ["reconstruct", trained["model"], store, "-o", store / "inside.zarr", "--upsample", 2],
        ["fit", store, "-o", store, "--config", trained["config"], "--overwrite"],
        ["ingest", store, "-o", store, "--overwrite"],
    ):
        code, out, err = cli(*args)
        assert_clean_cli_error(code, out, err, "rec.zarr")
    assert sorted(p.name for p in store.rglob("*")) == before


def test_output_contains_the_input(valid_inputs, tmp_path) -> None:
    source = valid_inputs["traces-npy"].copy_to(tmp_path / "in")
    code, out, err = cli(
        "ingest", source.path, "-o", tmp_path / "in", "--overwrite", *source.cli_args()
    )
    assert_clean_cli_error(code, out, err, "in")
    assert source.path.exists()


def test_symlink_loop_and_dangling_link(tmp_path) -> None:
    loop, dangling = tmp_path / "loop.npy", tmp_path / "gone.npy"
    os.symlink(loop, loop)
    os.symlink(tmp_path / "nowhere.npy", dangling)
    for path in (loop, dangling):
        code, out, err = cli("ingest", path, "-o", tmp_path / "o.zarr")
        assert "symbolic link" in assert_clean_cli_error(code, out, err, path.name)
        code, out, err = cli("info", path)
        assert_clean_cli_error(code, out, err, path.name)


def test_pipe_and_device_are_refused_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "traces.npy"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        code, out, err = cli("ingest", path, "-o", tmp_path / "o.zarr", "--format", "traces")
        assert "not a regular file" in assert_clean_cli_error(code, out, err, path.name)


def test_non_utf8_and_newline_file_names(tmp_path) -> None:
    for raw in (b"bad\xffname.npy", b"two\nlines.npy"):
        name = os.fsdecode(raw)
        (tmp_path / name).write_bytes(b"\x93NUMPY garbage")
        code, out, err = cli("ingest", tmp_path / name, "-o", tmp_path / "o.zarr")
        assert_clean_cli_error(code, out, err, "name.npy" if b"\xff" in raw else "lines.npy")


def test_dotdot_output_outside_an_existing_folder(trained, tmp_path) -> None:
    out = tmp_path / "missing" / ".." / "up.zarr"
    code, stdout, err = cli(
        "reconstruct", trained["model"], trained["store"], "-o", out, "--upsample", 2
    )
    assert_clean_cli_error(code, stdout, err, "does not exist")


# --- the other commands --------------------------------------------------------------------


def test_simulate_refuses_to_clobber(tmp_path) -> None:
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep")
    code, out, err = cli("simulate", "-o", precious, "--frames", 20, "--rois", 3)
    assert_clean_cli_error(code, out, err, "results")
    assert (precious / "thesis.txt").read_text() == "keep"


def _has_command(name: str) -> bool:
    return name in {c.name or c.callback.__name__ for c in app.registered_commands}


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "{tmp}/missing.zarr", "-o", "{tmp}/report"],
        ["evaluate", "{store}", "-o", "{tmp}/report", "--config", "{tmp}/bad.toml"],
        ["batch", "{store}", "-o", "{tmp}/out", "--config", "{tmp}/bad.toml"],
        ["view", "{tmp}/missing.zarr"],
    ],
    ids=["evaluate-missing", "evaluate-bad-config", "batch-bad-config", "view-missing"],
)
def test_other_commands_bad_input(trained, tmp_path, args) -> None:
    (tmp_path / "bad.toml").write_text("window = = 3\n")
    argv = [a.format(tmp=tmp_path, store=trained["store"]) for a in args]
    if not _has_command(argv[0]):
        pytest.skip(f"no {argv[0]} command in this build")
    code, out, err = cli(*argv)
    assert_clean_cli_error(code, out, err)
    assert not (tmp_path / "report").exists() and not (tmp_path / "out" / "summary.csv").exists()


@pytest.mark.parametrize("name", ["missing_folder", "loop.npy"])
def test_batch_reports_a_bad_recording(tmp_path, name: str) -> None:
    """batch's contract: a bad recording fails alone (exit 1, one ``failed:`` line naming it)."""
    if not _has_command("batch"):
        pytest.skip("no batch command in this build")
    os.symlink(tmp_path / "loop.npy", tmp_path / "loop.npy")
    code, out, err = cli("batch", tmp_path / name, "-o", tmp_path / "out")
    assert code == 1 and "Traceback" not in out + err
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and name in failed[0], err
