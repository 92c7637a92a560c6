"""Atomic files and folders, the one temporary naming scheme, and the overwrite scope."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cst_neuro.atomic import (
    OutputKind,
    atomic_file,
    atomic_folder,
    check_output,
    remove_stale,
    temporary_sibling,
    write_bytes,
    write_text,
)
from cst_neuro.errors import OutputError

NOTES = OutputKind("a notes file", folder=False, recognise=lambda p: p.read_text() == "notes")
REPORT = OutputKind("a report", folder=True, recognise=lambda p: (p / "report.json").is_file())


def test_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    write_text(path, "one")
    write_bytes(path, b"two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_no_replace_keeps_what_another_process_wrote(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"theirs")
    with pytest.raises(OutputError, match="created by another process"):
        write_bytes(path, b"mine", replace=False)
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "movie.tif"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="codec"), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("codec failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["movie.tif"]


def test_os_errors_become_output_errors_naming_the_output(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"out\.txt: write failed"):
        write_text(tmp_path / "missing" / "out.txt", "x")


def test_folder_is_complete_or_absent(tmp_path: Path) -> None:
    path = tmp_path / "report"
    with atomic_folder(path, overwrite=False) as tmp:
        (tmp / "report.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt), atomic_folder(path, overwrite=True) as tmp:
        (tmp / "report.json").write_text("half")
        raise KeyboardInterrupt
    assert (path / "report.json").read_text() == "{}"
    with (
        pytest.raises(OutputError, match="created by another process"),
        atomic_folder(path, overwrite=False) as tmp,
    ):
        (tmp / "x").write_text("x")
    with atomic_folder(path, overwrite=True) as tmp:
        (tmp / "report.json").write_text("new")
    assert (path / "report.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def test_one_cleanup_removes_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    path = tmp_path / "rec.zarr"
    mine = temporary_sibling(path)
    mine.mkdir()
    dead_tag = mine.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    for kind in ("partial", "replaced"):
        dead = tmp_path / dead_tag.replace(".partial-", f".{kind}-")
        dead.mkdir(exist_ok=True)
        (dead / "chunk").write_text("x")
    (tmp_path / dead_tag.replace("rec.zarr", "other.zarr")).mkdir()  # another output's
    remove_stale(path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([mine.name, dead_tag.replace("rec.zarr", "other.zarr")])


def test_existing_output_needs_overwrite_and_must_be_recognised(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    assert check_output(path, NOTES, overwrite=False) == path
    path.write_text("thesis")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output(path, NOTES, overwrite=False)
    with pytest.raises(OutputError, match="exists and is a file but not a notes file"):
        check_output(path, NOTES, overwrite=True)
    path.write_text("notes")
    assert check_output(path, NOTES, overwrite=True) == path
    folder = tmp_path / "report"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder but not a report"):
        check_output(folder, REPORT, overwrite=True)
    with pytest.raises(OutputError, match="is a file but not a report"):
        check_output(path, REPORT, overwrite=True)


def test_a_link_is_resolved_so_nothing_is_left_behind(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    (target / "report.json").write_text("{}")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert check_output(link, REPORT, overwrite=True) == target.resolve()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="broken symbolic link"):
        check_output(tmp_path / "dangling", REPORT, overwrite=True)


def test_inputs_are_never_outputs(tmp_path: Path) -> None:
    source = tmp_path / "suite2p"
    (source / "plane0").mkdir(parents=True)
    for out, problem in ((source, "is the input"), (source / "plane0" / "x", "lies inside"),
                         (tmp_path, "contains the input")):  # fmt: skip
        with pytest.raises(OutputError, match=problem):
            check_output(out, REPORT, overwrite=True, inputs=[source])
