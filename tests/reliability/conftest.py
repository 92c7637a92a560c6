"""Fixtures of the reliability suite: one genuine input per reader, a trained tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._inputs import BUILDERS, Valid, build_valid, cst_config, run_cli


@pytest.fixture(scope="session")
def valid_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Valid]:
    """Every reader's genuine input, written once per session (never damaged in place)."""
    pytest.importorskip("pynwb", reason="the NWB input needs pynwb (dev extra)")
    root = tmp_path_factory.mktemp("valid")
    return {kind: build_valid(kind, root / kind) for kind in BUILDERS}


@pytest.fixture
def fresh(valid_inputs: dict[str, Valid], tmp_path: Path):
    """``fresh(kind)``: a private copy of a genuine input that a test may damage."""

    def copy(kind: str) -> Valid:
        return valid_inputs[kind].copy_to(tmp_path / kind)

    return copy


@pytest.fixture(scope="session")
def trained(
    valid_inputs: dict[str, Valid], tmp_path_factory: pytest.TempPathFactory, tiny_model: dict
) -> dict:
    """A store ingested from the Suite2p input and a tiny model fitted on it (CLI)."""
    root = tmp_path_factory.mktemp("trained")
    store, model = root / "rec.zarr", root / "model.pt"
    code, _, err = run_cli("ingest", str(valid_inputs["suite2p-v0"].path), "-o", str(store))
    assert code == 0, err
    config = cst_config(root / "tiny.toml", tiny_model, max_epochs=1)
    code, _, err = run_cli("fit", str(store), "-o", str(model), "--config", str(config))
    assert code == 0, err
    return {"store": store, "model": model, "config": config, "root": root}
