"""The released architecture (modes "paper" and "transformer"): shapes, masking, the flaw."""

from __future__ import annotations

import pytest
import torch

from cst_neuro.model.layers import manual_attention
from cst_neuro.model.paper import PaperConfig, PaperCST

from ._helpers import LAYOUTS, make_tokens, tiny_paper_config


def _model(config: PaperConfig, dtype: torch.dtype = torch.float64) -> PaperCST:
    torch.manual_seed(0)
    return PaperCST(config).to(dtype).eval()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_shapes_for_every_layout(layout: str) -> None:
    config = tiny_paper_config(layout)
    model = _model(config, torch.float32)
    values, coords, ids = make_tokens(config, B=2, N=11)
    _, query_coords, query_ids = make_tokens(config, B=2, N=5, seed=1)
    out = model(values, coords, ids, query_coords=query_coords, query_ids=query_ids)
    assert out.shape == (2, 5, config.value_dim)
    assert model.forward_tokens(values, coords, ids).shape == (2, 11, config.value_dim)


def test_sdpa_and_hand_written_attention_agree() -> None:
    config = tiny_paper_config("roi")
    model = _model(config)
    values, coords, ids = make_tokens(config, B=3, N=12, dtype=torch.float64)
    mask = torch.rand(3, 12, generator=torch.Generator().manual_seed(5)) > 0.3
    mask[:, 0] = True
    fast = model.forward_tokens(values, coords, ids, mask)
    with manual_attention(model):
        slow = model.forward_tokens(values, coords, ids, mask)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


def test_padded_tokens_do_not_change_outputs() -> None:
    config = tiny_paper_config("roi")
    model = _model(config)
    values, coords, ids = make_tokens(config, B=1, N=9, dtype=torch.float64)
    junk_v, junk_c, junk_i = make_tokens(config, B=1, N=4, seed=9, dtype=torch.float64)
    padded = (
        torch.cat([values, 1e3 * junk_v], 1),
        torch.cat([coords, junk_c], 1),
        torch.cat([ids, junk_i], 1),
    )
    mask = torch.tensor([[True] * 9 + [False] * 4])
    _, query_coords, query_ids = make_tokens(config, B=1, N=5, seed=1, dtype=torch.float64)
    plain = model(values, coords, ids, query_coords=query_coords, query_ids=query_ids)
    masked = model(*padded, mask, query_coords=query_coords, query_ids=query_ids)
    torch.testing.assert_close(masked, plain, rtol=1e-12, atol=1e-12)


def test_prediction_depends_on_other_queries() -> None:
    """The flaw mode "cst" fixes: dummies attend to each other."""
    config = tiny_paper_config("spirals")
    model = _model(config)
    values, coords, _ = make_tokens(config, B=1, N=10, dtype=torch.float64)
    _, query_coords, _ = make_tokens(config, B=1, N=6, seed=1, dtype=torch.float64)
    together = model(values, coords, query_coords=query_coords)
    alone = model(values, coords, query_coords=query_coords[:, :1])
    assert not torch.allclose(alone[:, 0], together[:, 0])


def test_input_noise_only_in_training() -> None:
    config = tiny_paper_config("spirals", input_noise=0.5)
    model = _model(config, torch.float32)
    values, coords, _ = make_tokens(config, B=1, N=8)
    model.train()
    torch.manual_seed(0)
    noisy = model.forward_tokens(values, coords)
    model.eval()
    clean = model.forward_tokens(values, coords)
    assert not torch.equal(noisy, clean)
    assert torch.equal(clean, model.forward_tokens(values, coords))


def test_matches_the_released_parameter_count() -> None:
    # the release's toy network: dim 32, 4 layers, 4 heads, ff 3072, a 2-d state, Linear(3 -> 32);
    # it logs 818,016, which includes an unused nn.Embedding(10, 32) (320 parameters)
    config = PaperConfig(d_model=32, n_layers=4, n_heads=4, d_ff=3072, value_dim=2, coord_dims=3)
    assert PaperCST(config).num_params() == 818_016 - 320


def test_runs_on_the_meta_device() -> None:
    config = tiny_paper_config("roi", dropout=0.1, input_noise=0.1)
    model = PaperCST(config).to("meta").train()
    values, coords, ids = make_tokens(config, B=2, N=6)
    _, query_coords, query_ids = make_tokens(config, B=2, N=3, seed=1)
    meta = [x.to("meta") for x in (values, coords, ids, query_coords, query_ids)]
    out = model(*meta[:3], query_coords=meta[3], query_ids=meta[4])
    assert out.device.type == "meta" and out.shape == (2, 3, 1)


def test_bad_inputs_name_the_fix() -> None:
    model = PaperCST(tiny_paper_config("roi"))
    values, coords, ids = make_tokens(model.config, B=2, N=4)
    with pytest.raises(ValueError, match=r"set PaperConfig\.value_dim"):
        model.forward_tokens(values.expand(-1, -1, 3), coords, ids)
    with pytest.raises(ValueError, match="pass ids"):
        model.forward_tokens(values, coords)
