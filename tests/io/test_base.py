"""The reader registry and dispatcher: one broken sniffer is reported, never fatal."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cst_neuro.io import base


class _Broken(base.Reader):
    name = "broken"

    def guess_can_open(self, path: Path) -> bool:
        raise RuntimeError("sniffer bug")


def test_a_raising_sniffer_is_logged_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base.load_readers()
    monkeypatch.setattr(base, "READERS", {"broken": _Broken(), **base.READERS})
    monkeypatch.setattr(base, "load_readers", lambda only=None: base.READERS)
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    with caplog.at_level(logging.WARNING, logger="cst_neuro.io.base"):
        assert base.guess_format(tmp_path / "x.npy") == "traces"
    assert "the broken reader's format check failed (RuntimeError: sniffer bug)" in caplog.text
