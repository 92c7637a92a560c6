"""FitConfig: TOML files, checked settings, the mode's own network settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cst_neuro.errors import InputError
from cst_neuro.fit_config import FitConfig


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('mode = "transformer"\nwindow = 24\n[model]\nd_model = 48\n')
    config = FitConfig.from_toml(path, max_epochs=3)
    assert (config.mode, config.window, config.max_epochs) == ("transformer", 24, 3)
    assert config.model == {"d_model": 48}
    path.write_text("windw = 24\n")
    with pytest.raises(InputError, match=r"c\.toml: unknown setting"):
        FitConfig.from_toml(path)
    path.write_text("window = \n")
    with pytest.raises(InputError, match="not a valid TOML"):
        FitConfig.from_toml(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"mode": "gpt"}, "mode must be one of cst, transformer, paper"),
        ({"window": 1}, "setting window = 1 must be >= 2"),
        ({"lr": "fast"}, "setting lr = 'fast' must be a number"),
        ({"val_fraction": 0.95}, "setting val_fraction = 0.95 must be <= 0.9"),
        ({"model": {"n_latent_times": 4}, "mode": "paper"}, "unknown \\[model\\] setting"),
        ({"model": {"d_model": 10, "n_heads": 4}}, "divisible by n_heads"),
        ({"model": 3}, "must be a table"),
    ],
)
def test_bad_settings_name_the_source_and_the_setting(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        FitConfig.from_dict(raw, source="fit.toml")
    assert str(info.value).startswith("fit.toml: ")


def test_a_dict_round_trip_keeps_every_setting() -> None:
    config = FitConfig.from_dict({"mode": "transformer", "window": 12, "model": {"d_model": 8}})
    assert FitConfig.from_dict(config.to_dict()) == config


def test_sobolev_steps_are_one_frame() -> None:
    config = FitConfig(window=20, sobolev_k=3, sobolev_weight=0.5, n_collocation=7)
    sobolev = config.sobolev()  # the cst's time unit is a frame
    assert (sobolev.k, sobolev.step, sobolev.n_collocation) == (3, 1.0, 7)
    assert sobolev.lambdas() == (0.5, 0.5, 0.5)
    assert config.sobolev(step=1 / 20).step == 1 / 20  # a window of 20 frames as the unit


def test_resolving_decides_the_prior_and_what_goes_with_it() -> None:
    tuned = FitConfig().resolved()
    assert (tuned.prior, tuned.lr, tuned.val_block) == ("default", 3e-4, 1)
    scratch = FitConfig(prior="none").resolved()
    assert (scratch.prior, scratch.lr, scratch.val_block) == ("none", 1e-3, 4)
    paper = FitConfig(mode="paper").resolved()
    assert (paper.prior, paper.val_block) == ("none", 4)
    kept = FitConfig(lr=0.01, val_block=2).resolved()
    assert (kept.lr, kept.val_block) == (0.01, 2)
