"""Paper parity harness on the real IE spirals: fixed split, classic numbers, a short run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cst_neuro.errors import InputError
from cst_neuro.evaluate import spirals


@pytest.fixture(scope="module")
def split(shared_data: Path) -> spirals.SpiralSplit:
    return spirals.load_spirals(shared_data / "toy" / "ie_spirals_500x100x2.npy")


def test_split_is_fixed_and_disjoint(split: spirals.SpiralSplit, shared_data: Path) -> None:
    assert (len(split.train), len(split.val), len(split.test)) == (300, 50, 150)
    again = spirals.load_spirals(shared_data / "toy" / "ie_spirals_500x100x2.npy")
    np.testing.assert_array_equal(split.test, again.test)
    rows = {c.tobytes() for c in split.train} | {c.tobytes() for c in split.val}
    assert not rows & {c.tobytes() for c in split.test}
    assert spirals.OBSERVED.tolist() == list(range(0, 100, 11)) and spirals.HELD.size == 90


def test_classic_baselines_match_the_reference_scale(split: spirals.SpiralSplit) -> None:
    mse = {k: spirals.held_out_mse(v, split.test) for k, v in spirals.classic(split.test).items()}
    # reference on other 150 curves: linear 1.52e-3, cubic spline 0.92e-3, PCHIP 1.21e-3
    assert 1.3e-3 < mse["linear"] < 1.7e-3
    assert 0.75e-3 < mse["cubic"] < 1.05e-3 and 1.05e-3 < mse["pchip"] < 1.35e-3


def test_learned_linear_recovers_an_exactly_linear_family() -> None:
    """Curves a + b·t + c·t² (per dimension, random per curve): every held-out value is a
    linear function of the observed ones, so the map fits the test curves almost exactly,
    with the weakest strength; pure noise leaves it no better than the mean."""
    rng = np.random.default_rng(0)

    def family(n: int) -> np.ndarray:
        a, b, c = rng.normal(size=(3, n, 1, 2))
        t = spirals.T[None, :, None]
        return a + b * t + c * t**2

    exact = spirals.SpiralSplit(family(300), family(50), family(150))
    pred, strength = spirals.learned_linear(exact)
    assert strength == 1e-4 and spirals.held_out_mse(pred, exact.test) < 1e-6
    noise = spirals.SpiralSplit(*(rng.normal(size=(n, 100, 2)) for n in (300, 50, 150)))
    pred, _ = spirals.learned_linear(noise)
    assert spirals.held_out_mse(pred, noise.test) > 0.95


@pytest.mark.parametrize("mode", ["cst", "paper"])
def test_a_short_training_run_reports_finite_scores(split, mode: str) -> None:
    small = spirals.SpiralSplit(split.train[:32], split.val[:8], split.test[:8])
    out = spirals.train_spirals(small, mode, minutes=0.0, batch_size=16)
    assert out["epochs"] >= 1 and np.isfinite(out["test_mse"]) and out["test_mse"] > 0


def test_bad_files_raise(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 100, 2)))
    with pytest.raises(InputError, match="expected"):
        spirals.load_spirals(tmp_path / "x.npy")
