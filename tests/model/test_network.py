"""The CST network: shapes, attention paths, masking, query independence, determinism, devices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cst_neuro.model import CST, CSTConfig, add_dummy_tokens, manual_attention
from cst_neuro.model.network import ChannelGroups

from ._helpers import LAYOUTS, make_tokens, tiny_config

MODES = ["cst", "paper", "transformer"]


def _model(config: CSTConfig, dtype: torch.dtype = torch.float64) -> CST:
    torch.manual_seed(0)
    return CST(config).to(dtype).eval()


def _queries(config: CSTConfig, B: int, Q: int, dtype: torch.dtype = torch.float64, seed: int = 1):
    _, coords, ids = make_tokens(config, B, Q, seed=seed, dtype=dtype)
    return coords, ids


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_shapes_for_every_layout_and_mode(mode: str, layout: str) -> None:
    config = tiny_config(layout, mode=mode)
    model = _model(config, torch.float32)
    values, coords, ids = make_tokens(config, B=2, N=11)
    query_coords, query_ids = _queries(config, 2, 5, torch.float32)
    out = model(values, coords, ids, query_coords=query_coords, query_ids=query_ids)
    assert out.shape == (2, 5, config.value_dim)
    if mode == "cst":
        context = model.encode(values, coords, ids)
        assert context.memory.shape == (2, 8, 16)  # 4 latent times × 2 latents
        assert len(context.kv) == config.n_decoder_layers
        d = model.decode_derivatives(context, query_coords, query_ids, order=3)
        assert d.shape == (4, 2, 5, config.value_dim)
    else:
        assert model.forward_tokens(values, coords, ids).shape == (2, 11, config.value_dim)


def test_cst_without_latents_attends_to_the_tokens() -> None:
    config = tiny_config("spirals", n_latent_times=0)
    model = _model(config)
    values, coords, _ = make_tokens(config, B=2, N=10, dtype=torch.float64)
    context = model.encode(values, coords)
    assert context.memory.shape == (2, 10, 16)
    assert not hasattr(model, "read_in")


def _outputs(model: CST, values, coords, ids, mask, query_coords, query_ids) -> torch.Tensor:
    if model.config.mode == "cst":
        context = model.encode(values, coords, ids, mask)
        return torch.cat(
            [context.memory.flatten(), model.decode(context, query_coords, query_ids).flatten()]
        )
    return model.forward_tokens(values, coords, ids, mask)


@pytest.mark.parametrize(("mode", "latents"), [("cst", 4), ("cst", 0), ("paper", 0)])
def test_sdpa_and_hand_written_attention_agree(mode: str, latents: int) -> None:
    config = tiny_config("roi", mode=mode, n_latent_times=latents, attn_dropout=0.0)
    model = _model(config)
    values, coords, ids = make_tokens(config, B=3, N=12, dtype=torch.float64)
    mask = torch.rand(3, 12, generator=torch.Generator().manual_seed(5)) > 0.3
    mask[:, 0] = True
    query_coords, query_ids = _queries(config, 3, 4)
    assert all(m.flash for m in model.modules() if hasattr(m, "flash"))
    fast = _outputs(model, values, coords, ids, mask, query_coords, query_ids)
    with manual_attention(model):
        assert not any(m.flash for m in model.modules() if hasattr(m, "flash"))
        slow = _outputs(model, values, coords, ids, mask, query_coords, query_ids)
    assert all(m.flash for m in model.modules() if hasattr(m, "flash"))  # restored
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    forced = (
        CST(tiny_config("roi", mode=mode, n_latent_times=latents, use_sdpa=False)).double().eval()
    )
    forced.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        _outputs(forced, values, coords, ids, mask, query_coords, query_ids), fast
    )


@pytest.mark.parametrize(
    ("mode", "latents"), [("cst", 4), ("cst", 0), ("paper", 0), ("transformer", 0)]
)
def test_padded_tokens_do_not_change_outputs(mode: str, latents: int) -> None:
    config = tiny_config("roi", mode=mode, n_latent_times=latents)
    model = _model(config)
    values, coords, ids = make_tokens(config, B=1, N=9, dtype=torch.float64)
    junk_v, junk_c, junk_i = make_tokens(config, B=1, N=4, seed=9, dtype=torch.float64)
    padded = (
        torch.cat([values, 1e3 * junk_v], 1),
        torch.cat([coords, junk_c], 1),
        torch.cat([ids, junk_i], 1),
    )
    mask = torch.tensor([[True] * 9 + [False] * 4])
    query_coords, query_ids = _queries(config, 1, 5)
    plain = model(values, coords, ids, query_coords=query_coords, query_ids=query_ids)
    masked = model(*padded, mask, query_coords=query_coords, query_ids=query_ids)
    torch.testing.assert_close(masked, plain, rtol=1e-12, atol=1e-12)


def test_cst_prediction_at_a_query_does_not_depend_on_other_queries() -> None:
    config = tiny_config("roi")
    model = _model(config)
    values, coords, ids = make_tokens(config, B=2, N=15, dtype=torch.float64)
    query_coords, query_ids = _queries(config, 2, 6)
    context = model.encode(values, coords, ids)
    together = model.decode(context, query_coords, query_ids)
    for q in range(6):
        alone = model.decode(context, query_coords[:, q : q + 1], query_ids[:, q : q + 1])
        torch.testing.assert_close(alone[:, 0], together[:, q], rtol=1e-12, atol=1e-12)


def test_paper_prediction_depends_on_other_queries() -> None:
    """The flaw mode "cst" fixes: dummies attend to each other."""
    config = tiny_config("spirals", mode="paper")
    model = _model(config)
    values, coords, _ = make_tokens(config, B=1, N=10, dtype=torch.float64)
    query_coords, _ = _queries(config, 1, 6)
    together = model(values, coords, query_coords=query_coords)
    alone = model(values, coords, query_coords=query_coords[:, :1])
    assert not torch.allclose(alone[:, 0], together[:, 0])


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_in_eval_and_seeded_in_train(mode: str) -> None:
    config = tiny_config("roi", mode=mode, dropout=0.2, attn_dropout=0.2, input_noise=0.1)
    model = _model(config, torch.float32)
    values, coords, ids = make_tokens(config, B=2, N=12)
    query_coords, query_ids = _queries(config, 2, 5, torch.float32)

    def run(seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            torch.manual_seed(seed)
        return model(values, coords, ids, query_coords=query_coords, query_ids=query_ids)

    model.eval()
    torch.manual_seed(1)
    a = run()
    torch.manual_seed(2)
    assert torch.equal(a, run())
    model.train()
    assert torch.equal(run(seed=3), run(seed=3))
    assert not torch.equal(run(seed=3), run(seed=4))
    assert not torch.equal(run(seed=3), a)


def test_input_noise_only_in_training() -> None:
    config = tiny_config("spirals", mode="paper", input_noise=0.5)
    model = _model(config, torch.float32)
    values, coords, _ = make_tokens(config, B=1, N=8)
    model.train()
    noisy = model.embed_tokens(values, coords)
    model.eval()
    clean = model.embed_tokens(values, coords)
    assert not torch.equal(noisy, clean)
    assert torch.equal(clean, model.embed_tokens(values, coords))


def test_paper_mode_matches_the_released_parameter_count() -> None:
    # the release's toy network: dim 32, 4 layers, 4 heads, ff 3072, a 2-d state, Linear(3 -> 32);
    # it logs 818,016, which includes an unused nn.Embedding(10, 32) (320 parameters)
    config = CSTConfig(
        mode="paper", d_model=32, n_layers=4, n_heads=4, d_ff=3072, value_dim=2, coord_dims=3
    )
    assert CST(config).num_params() == 818_016 - 320


def test_num_params_counts_parameters_not_the_fourier_buffer() -> None:
    model = CST(tiny_config("roi"))
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params() == total
    assert model.num_params(exclude_ids=True) == total - 7 * 16
    assert "coord_embed.freqs" in model.state_dict()


def test_state_dict_round_trip_restores_the_same_function() -> None:
    config = tiny_config("roi")
    a = _model(config)
    b = CST(tiny_config("roi", fourier_seed=123)).double().eval()
    values, coords, ids = make_tokens(config, B=1, N=10, dtype=torch.float64)
    query_coords, query_ids = _queries(config, 1, 3)
    b.load_state_dict(a.state_dict())  # the frequencies come with the weights
    torch.testing.assert_close(
        b(values, coords, ids, query_coords=query_coords, query_ids=query_ids),
        a(values, coords, ids, query_coords=query_coords, query_ids=query_ids),
    )


@pytest.mark.parametrize("mode", MODES)
def test_device_agnostic_runs_on_the_meta_device(mode: str) -> None:
    """Any tensor created on a fixed device (e.g. CPU, or .cuda()) would clash with meta ones."""
    config = tiny_config("roi", mode=mode, dropout=0.1, input_noise=0.1)
    model = CST(config).to("meta").train()
    values, coords, ids = make_tokens(config, B=2, N=6)
    query_coords, query_ids = _queries(config, 2, 3, torch.float32)
    meta = [x.to("meta") for x in (values, coords, ids, query_coords, query_ids)]
    out = model(*meta[:3], query_coords=meta[3], query_ids=meta[4])
    assert out.device.type == "meta" and out.shape == (2, 3, 1)
    if mode == "cst":
        context = model.encode(*meta[:3])
        d = model.decode_derivatives(context, meta[3], meta[4], order=2, direction=1)
        assert d.device.type == "meta" and d.shape == (3, 2, 3, 1)
    else:
        tokens = add_dummy_tokens(*meta[:2], meta[3], ids=meta[2], dummy_ids=meta[4])
        assert tokens.values.device.type == "meta"


def test_autocast_runs_and_derivatives_stay_in_full_precision() -> None:
    config = tiny_config("roi")
    model = _model(config, torch.float32)
    values, coords, ids = make_tokens(config, B=2, N=12)
    query_coords, query_ids = _queries(config, 2, 5, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context = model.encode(values, coords, ids)
        out = model.decode(context, query_coords, query_ids)
        d = model.decode_derivatives(context, query_coords, query_ids, order=2)
    assert out.dtype == torch.bfloat16
    assert d.dtype == torch.float32
    reference = model.decode_derivatives(
        model.encode(values, coords, ids), query_coords, query_ids, order=2
    )
    torch.testing.assert_close(d, reference, rtol=0.1, atol=0.1)  # only the context was bf16


def test_bad_inputs_raise_errors_that_name_the_fix() -> None:
    model = CST(tiny_config("roi"))
    values, coords, ids = make_tokens(model.config, B=2, N=4)
    with pytest.raises(ValueError, match="value_dim=1"):
        model.encode(values.expand(-1, -1, 3), coords, ids)
    with pytest.raises(ValueError, match="coord_dims=3"):
        model.encode(values, coords[..., :1], ids)
    with pytest.raises(ValueError, match="pass ids"):
        model.encode(values, coords)
    with pytest.raises(ValueError, match="at least one observed token"):
        model.encode(values, coords, ids, torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="use forward_tokens"):
        CST(tiny_config("roi", mode="paper")).encode(values, coords, ids)
    with pytest.raises(ValueError, match="n_ids is 0"):
        CST(tiny_config("spirals")).encode(
            *make_tokens(tiny_config("spirals"), 1, 3)[:2], ids[:1, :3]
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "gpt"}, "mode must be one of"),
        ({"d_model": 10, "n_heads": 4}, "divisible by n_heads"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"fourier_scale": (1.0, 2.0)}, "one per coordinate"),
        ({"n_layers": -1}, "n_layers must be 0 or more"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CSTConfig(**overrides)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    shared_cache=st.booleans(),
    n_queries=st.integers(1, 12),
    n_ids=st.integers(1, 5),
    row_tokens=st.sampled_from([1, 24]),
    seed=st.integers(0, 2**16),
)
def test_channel_groups_multiply_each_query_by_its_own_rows(
    batch: int, shared_cache: bool, n_queries: int, n_ids: int, row_tokens: int, seed: int
) -> None:
    """Grouped own-channel products equal gathering each query's rows (any id pattern)."""
    gen = torch.Generator().manual_seed(seed)
    cache_batch = 1 if shared_cache else batch
    ids = torch.randint(0, n_ids, (batch, n_queries), generator=gen)
    if n_queries > 3:  # a long run on one channel, as a trace or padding gives
        ids[0, : n_queries // 2] = 0
    H, K1, n, m = 2, 3, 4, 5
    x = torch.randn(K1, batch, H, n_queries, n, generator=gen, dtype=torch.float64)
    table = torch.randn(H, cache_batch * n_ids, n, m, generator=gen, dtype=torch.float64)
    groups = ChannelGroups.of(ids, cache_batch, n_ids, row_tokens)
    out = groups.matmul(x, groups.rows_of(table))
    row = ids + (torch.arange(batch)[:, None] * n_ids if cache_batch > 1 else 0)
    for b in range(batch):
        for q in range(n_queries):
            expected = x[:, b, :, q, None, :] @ table[:, row[b, q]]  # (K1, H, 1, m)
            torch.testing.assert_close(out[:, b, :, q], expected[:, :, 0])
