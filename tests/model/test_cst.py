"""The CST's inference decode: queries arranged by channel group give the jet path's values."""

from __future__ import annotations

import pytest
import torch

from cst_neuro.model import cst
from cst_neuro.model.cst import CST

from ._helpers import make_tokens, tiny_config


def _decode_both(model: CST, context: cst.Context, coords, ids) -> tuple:
    """(inference decode, the same decode through the jet path that training uses)."""
    with torch.no_grad():
        fast = model.decode(context, coords, ids)
    with torch.enable_grad():
        reference = model.decode(context, coords, ids).detach()
    return fast, reference


@pytest.mark.parametrize(
    ("layout", "latents", "grouped"),
    [("roi", 4, False), ("roi", 4, True), ("patches", 4, True), ("roi", 0, False)],
)
def test_inference_decode_equals_the_jet_path(
    layout: str, latents: int, grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scattered or grouped queries, several decoder passes (a small `QUERY_BLOCK`), a channel
    with no tokens in the window, tokens missing from others; and a model without latents,
    which decodes the same way with and without gradients."""
    monkeypatch.setattr(cst, "QUERY_BLOCK", 8)
    config = tiny_config(
        layout,
        n_latent_times=latents,
        interpolant="linear",
        readout_rank=2,
        n_ids=6 if latents else 0,
        channel_features=3,
    )
    torch.manual_seed(0)
    model = CST(config).eval()
    values, coords, _ = make_tokens(config, B=1, N=60, seed=1)
    ids = torch.randint(0, 5, (1, 60), generator=torch.Generator().manual_seed(2))  # none is 5
    ids[0, :12] = 3  # a well-observed channel
    channels = torch.randn(1, 6, 3)
    seconds = torch.tensor([0.05])
    gen = torch.Generator().manual_seed(3)
    if grouped:  # all of a channel's queries together, as `Reconstructor` asks
        query_ids = torch.arange(6).repeat_interleave(5)[None]
    else:
        query_ids = torch.randint(0, 6, (1, 30), generator=gen)
    query_coords = torch.rand(1, 30, config.coord_dims, generator=gen) * 1.4 - 0.2
    with torch.no_grad():
        context = model.encode(values, coords, ids, channels=channels, seconds_per_frame=seconds)
    fast, reference = _decode_both(model, context, query_coords, query_ids)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


def test_queries_of_several_windows_against_one_context_are_grouped_together() -> None:
    """A batch of query sets (B > 1) against a shared context arranges across the batch."""
    config = tiny_config("roi", interpolant="linear", readout_rank=2)
    torch.manual_seed(1)
    model = CST(config).eval()
    values, coords, ids = make_tokens(config, B=1, N=50, seed=4)
    gen = torch.Generator().manual_seed(5)
    query_ids = torch.randint(0, config.n_ids, (3, 9), generator=gen)
    query_coords = torch.rand(3, 9, config.coord_dims, generator=gen)
    with torch.no_grad():
        context = model.encode(values, coords, ids)
    fast, reference = _decode_both(model, context, query_coords, query_ids)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
