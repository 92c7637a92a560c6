"""The Continuous Spatiotemporal Transformer done right: mode "cst", in one file.

References:
1) de Oliveira Fonseca, Zappala, Ortega Caro, van Dijk, "Continuous Spatiotemporal
   Transformer", ICML 2023 (arXiv 2301.13338): the method; `paper.py` holds its release.
2) Jaegle et al., "Perceiver IO", ICLR 2022, and Azabou et al., "A Unified, Scalable Framework
   for Neural Population Decoding" (POYO), NeurIPS 2023: the latent bottleneck.

A token is a value vector (V numbers: a ΔF/F sample, a flattened p×p patch, a 2-d state), a
continuous coordinate (C numbers: t, or t, y, x) and optionally an integer identity (a ROI).
Missing observations are absent tokens; batches of unequal length are padded and masked.

- a context encoder reads the observed tokens only. Observed tokens cross-attend into latents
  that sit on a time grid over the window (Perceiver IO / POYO), the latents self-attend,
  and each decoder layer's keys and values of the result are cached in a `Context`;
- a query decoder embeds a query coordinate (Fourier features plus identity) and
  cross-attends to the context. Queries never attend to each other, so ŷ(q) depends only on
  q and the observations, and a new query costs one small decoder pass;
- attention is told where things are: every cross-attention adds a learned `CoordBias`,
  -Σ_d γ_hd (c_q,d - c_k,d)² (+ β_h for the query's own identity), to its scores. Content
  alone (q·k at init) gives uniform attention, and a decoder that averages a whole window
  receives almost no gradient: it predicted the mean for hundreds of steps. With latents and
  identities, each query also attends to the raw tokens of its own channel (`_gather`,
  O(Q·(L + W)) per layer): the latents carry the population, the own-channel keys the
  local trace that a 4-latents-per-time bottleneck cannot hold for hundreds of ROIs;
- with `interpolant="linear"` (fit's default) the decoder predicts a correction to the linear
  interpolant in time of the query's own channel (`interpolant`): softmax attention, a
  convex combination, cannot express a spline's negative weights and flattens transients
  larger than training showed, while the interpolant passes observed amplitudes through;
  its gain is learned, globally and (`channel_gain`, fit's default) per channel: noisier
  channels call for less of it; `readout_rank` > 0 adds a learned signed linear readout
  of the same samples (`Readout`), weights free in sign as a learned interpolation
  kernel's are;
- derivatives of ŷ with respect to the query coordinate are exact at every order: the
  encoding gives the coordinate jet in closed form and `taylor` carries it through the
  decoder (`decode_derivatives`), while the encoder keeps the fast SDPA kernels.

Why a latent bottleneck: a window holds 10-20k observed tokens (300 ROIs × 64 frames).
Self-attention over all of them costs O(N²) per layer, about 4·10⁸ scores per head, far too
slow on 2 CPU cores. With L latents the encoder costs O(N·L + L²) and decoding costs
O(Q·L), independent of N, which keeps a 1,000-query frame within interactive latency. For
few tokens (the IE spirals: 10 per curve) set `n_latent_times=0`: the encoder then
self-attends over the observed tokens and the decoder attends to them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cst_neuro.model import dropout as drop
from cst_neuro.model import interpolant, taylor
from cst_neuro.model._gather import ChannelGroups, LocalKeys, TokenCache, by_query, channel_table
from cst_neuro.model.encoding import FourierEncoding
from cst_neuro.model.layers import (
    Block,
    CrossBlock,
    NetworkConfig,
    autocast_off,
    check_coords,
    check_ids,
    check_tokens,
    key_padding,
)

Interpolant = Literal["none", "linear"]
INTERPOLANTS: tuple[str, ...] = ("none", "linear")


@dataclass
class CSTConfig(NetworkConfig):
    n_decoder_layers: int = 1  # query decoder blocks
    n_fourier: int = 64  # 2 * n_fourier random Fourier features
    fourier_scale: float | tuple[float, ...] = 8.0  # sd of the frequencies, cycles per unit
    fourier_seed: int = 0
    n_latent_times: int = 32  # latent time grid over [0, 1]; 0 = no latents
    latents_per_time: int = 4
    interpolant: Interpolant = "none"  # "linear" = predict a correction to it
    readout_rank: int = 0  # > 0 adds a signed linear readout of own-channel samples
    channel_gain: bool = False  # with ids: the interpolant's gain also learned per channel

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_fourier < 1:
            raise ValueError(f"CSTConfig.n_fourier must be at least 1, got {self.n_fourier}")
        for name in ("n_decoder_layers", "n_latent_times"):
            if getattr(self, name) < 0:
                raise ValueError(f"CSTConfig.{name} must be 0 or more, got {getattr(self, name)}")
        if self.latents_per_time < 1:
            raise ValueError(
                f"CSTConfig.latents_per_time must be at least 1, got {self.latents_per_time}"
            )
        if self.interpolant not in INTERPOLANTS:
            raise ValueError(
                f"CSTConfig.interpolant must be one of {INTERPOLANTS}, got {self.interpolant!r}"
            )
        if self.interpolant != "none" and self.n_latent_times and not self.n_ids:
            raise ValueError(
                "CSTConfig.interpolant with latents needs identities (n_ids > 0) to find "
                "each query's channel"
            )
        if self.readout_rank < 0:
            raise ValueError(f"CSTConfig.readout_rank must be 0 or more, got {self.readout_rank}")
        if self.readout_rank and self.interpolant == "none":
            raise ValueError("CSTConfig.readout_rank needs an interpolant (it reads the same keys)")
        scale = self.fourier_scale
        if isinstance(scale, tuple) and len(scale) != self.coord_dims:
            raise ValueError(
                f"CSTConfig.fourier_scale has {len(scale)} entries but coord_dims is "
                f"{self.coord_dims}: give one scale, or one per coordinate"
            )


class Readout(nn.Module):
    """A signed linear readout of the query's own-channel samples: Σ_j w_qj · y_j.

    Softmax attention weights are positive and sum to one; a spline's or a Wiener filter's
    weights are not. Here w_qj = ⟨a(x_q), b(t_j)⟩ (one per pair of value entries) from the
    decoder's final state x_q and the key's time embedding, unnormalised and free in sign,
    a rank-`rank` bilinear form. Linear in x_q, so its Taylor jet is the jet of a(x_q)
    contracted with the (constant) keys. Initialised like every linear layer of the
    network (normal, sd 0.02), so it starts as a small term.
    """

    def __init__(self, d_model: int, value_dim: int, rank: int) -> None:
        super().__init__()
        self.value_dim, self.rank = value_dim, rank
        self.query = nn.Linear(d_model, value_dim * value_dim * rank, bias=False)
        self.key = nn.Linear(d_model, rank)  # from a key's time embedding

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, valid: Tensor) -> Tensor:
        """Jet (K+1, B, Q, V) from the state jet x (K+1, B, Q, D), keys (B, Q or 1, M, r),
        values (B, Q or 1, M, V) and which keys are real (B, Q or 1, M)."""
        K1, B, Q = x.shape[:3]
        V, r = self.value_dim, self.rank
        a = F.linear(x, self.query.weight).view(K1, B, Q, V, V, r)
        keys = (keys * valid[..., None].to(keys.dtype)).expand(B, Q, -1, r)
        weights = torch.einsum("kbqvur,bqmr->kbqmvu", a, keys)
        return torch.einsum("kbqmvu,bqmu->kbqv", weights, values.expand(B, Q, -1, V))


@dataclass
class Context:
    """An encoded window: everything `CST.decode` needs, computed once per window."""

    memory: Tensor  # (B, L, D) latents, or observed tokens when there are none, after the encoder
    kv: list[tuple[Tensor, Tensor]]  # per decoder layer, keys and values (B, H, L, D/H)
    mask: Tensor | None  # (B, L) True for real entries; None when there is no padding
    coords: Tensor | None = None  # (B, L, C) coordinates of the memory entries
    ids: Tensor | None = None  # (B, L) identities of the memory entries (None for latents)
    time_only: bool = False  # memory entries have a time but no place (latents)
    tokens: TokenCache | None = None  # raw tokens by channel (latents with identities)
    values: Tensor | None = None  # (B, L, V) observed values of the memory entries (no latents)

    def to(self, dtype: torch.dtype) -> Context:
        """The same context with floating tensors in `dtype`."""
        return replace(
            self,
            memory=self.memory.to(dtype),
            kv=[(k.to(dtype), v.to(dtype)) for k, v in self.kv],
            coords=None if self.coords is None else self.coords.to(dtype),
            tokens=None if self.tokens is None else self.tokens.to(dtype),
            values=None if self.values is None else self.values.to(dtype),
        )


class CST(nn.Module):
    """The CST: `encode(values, coords, ids, mask) -> Context`, then
    `decode(context, query_coords, query_ids) -> (B, Q, V)` and
    `decode_derivatives(...) -> (K+1, B, Q, V)`; `forward` does both.
    """

    def __init__(self, config: CSTConfig) -> None:
        super().__init__()
        self.config = config
        D, C = config.d_model, config.coord_dims
        self.value_embed = nn.Linear(config.value_dim, D)
        self.id_embed = nn.Embedding(config.n_ids, D) if config.n_ids else None
        self.coord_embed = FourierEncoding(
            C, config.n_fourier, config.fourier_scale, D, config.fourier_seed
        )
        self.latent_embed: nn.Parameter | None = None
        if config.n_latent_times:
            latent_coords = torch.zeros(config.n_latent_times, C)
            latent_coords[:, 0] = torch.linspace(0.0, 1.0, config.n_latent_times)  # no place
            self.register_buffer("latent_coords", latent_coords, persistent=False)
            self.latent_embed = nn.Parameter(torch.zeros(config.latents_per_time, D))
            self.ln_tokens = nn.LayerNorm(D)
            self.read_in = CrossBlock(config, coord_dims=1)  # latents have a time only
        self.encoder = nn.ModuleList([Block(config, pre_norm=True) for _ in range(config.n_layers)])
        self.ln_memory = nn.LayerNorm(D)
        latents, ids = config.n_latent_times > 0, config.n_ids > 0
        self.decoder = nn.ModuleList(
            [
                CrossBlock(
                    config,
                    coord_dims=1 if latents else C,
                    use_ids=ids and not latents,
                    local=ids and latents,
                )
                for _ in range(config.n_decoder_layers)
            ]
        )
        self.ln_out = nn.LayerNorm(D)
        self.head = nn.Linear(D, config.value_dim)
        if config.interpolant != "none":  # learned: noisy samples call for less of it
            self.interpolant_gain = nn.Parameter(torch.ones(config.value_dim))
        self.channel_gain: nn.Embedding | None = None
        if config.channel_gain and config.n_ids and config.interpolant != "none":
            self.channel_gain = nn.Embedding(config.n_ids, config.value_dim)
        self.readout: Readout | None = None
        if config.readout_rank:
            self.readout = Readout(D, config.value_dim, config.readout_rank)

        self.apply(self._init_weights)
        if self.channel_gain is not None:
            nn.init.zeros_(self.channel_gain.weight)
        # inputs are data, not hidden states: unit-variance embeddings of unit-variance inputs
        for layer in (self.value_embed, self.coord_embed.proj):
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
        if self.latent_embed is not None:
            nn.init.normal_(self.latent_embed, std=0.02)
        # scaled init of the residual projections, per GPT-2
        n_branches = 2 * (config.n_layers + config.n_decoder_layers + 1)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(n_branches))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_ids: bool = False) -> int:
        """Number of trainable parameters.

        The Fourier frequencies are a fixed buffer and never counted. With `exclude_ids`, the
        identity table is left out: it grows with the recording (one row per ROI), not with
        the model.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_ids and self.id_embed is not None:
            n -= self.id_embed.weight.numel()
        return n

    # ---- the model ----------------------------------------------------------------------

    def embed_tokens(self, values: Tensor, coords: Tensor, ids: Tensor | None = None) -> Tensor:
        """Value + coordinate (+ identity) embedding, (B, N, D); input noise when training."""
        if self.training and self.config.input_noise > 0:
            values = values + self.config.input_noise * torch.randn_like(values)
        x = self.value_embed(values) + self.coord_embed(coords)
        if self.id_embed is not None:
            x = x + self.id_embed(ids)
        return x

    def forward(
        self,
        values: Tensor,
        coords: Tensor,
        ids: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        query_coords: Tensor,
        query_ids: Tensor | None = None,
    ) -> Tensor:
        """Predict values (B, Q, V) at query coordinates (B, Q, C) from observed tokens.

        Args:
            values: (B, N, V) observed values.
            coords: (B, N, C) their coordinates, normalised (time in [0, 1] over the window).
            ids: (B, N) integer identities, when `n_ids` > 0.
            mask: (B, N) bool, True for real tokens, False for padding; None = all real.
            query_coords, query_ids: (B, Q, C) and (B, Q), like coords and ids.
        """
        return self.decode(self.encode(values, coords, ids, mask), query_coords, query_ids)

    def encode(
        self, values: Tensor, coords: Tensor, ids: Tensor | None = None, mask: Tensor | None = None
    ) -> Context:
        """Encode the observed tokens of a window (see `forward` for shapes) into a Context."""
        check_tokens(self.config, values, coords, ids, mask)
        x = drop.dropout(self.embed_tokens(values, coords, ids), self.config.dropout, self.training)
        padding = key_padding(mask)
        if self.latent_embed is None:
            for block in self.encoder:
                x = block(x, mask=padding)
            memory = self.ln_memory(x)
            return Context(
                memory,
                [block.attn.keys_values(memory) for block in self.decoder],
                mask,
                coords=coords,
                ids=ids,
                values=values,
            )
        B, D = x.shape[0], x.shape[-1]
        times = self.coord_embed(self.latent_coords)  # (T, D)
        latents = times[:, None, :] + self.latent_embed[None, :, :]  # (T, P, D)
        latents = latents.view(1, -1, D).expand(B, -1, -1)  # (B, L, D), L = T·P
        latent_coords = self.latent_coords.repeat_interleave(self.config.latents_per_time, 0)
        latent_coords = latent_coords.to(coords.dtype)[None].expand(B, -1, -1)  # (B, L, C)
        tokens = self.ln_tokens(x)
        k, v = self.read_in.attn.keys_values(tokens)  # (B, H, N, D/H)
        bias = self.read_in.bias(latent_coords, coords, dims=1)
        z = self.read_in(latents[None], k, v, padding, bias)[0]  # (B, L, D)
        for block in self.encoder:
            z = block(z)
        memory = self.ln_memory(z)
        cache = None
        if ids is not None:
            table, valid = channel_table(ids, mask, self.config.n_ids)
            projections = [block.local_kv for block in self.decoder]
            cache = TokenCache.by_channel(
                tokens, coords, values, table, valid, projections, self.config.n_heads
            )
        return Context(
            memory,
            [block.attn.keys_values(memory) for block in self.decoder],
            None,
            coords=latent_coords,
            time_only=True,
            tokens=cache,
        )

    def decode(self, context: Context, coords: Tensor, ids: Tensor | None = None) -> Tensor:
        """Predictions (B, Q, V) at query coordinates (B, Q, C) with identities (B, Q)."""
        check_coords(self.config, coords, "query coords")
        check_ids(self.config, ids, coords.shape[:2], "query ids")
        return self._decode_jet(context, self.coord_embed(coords)[None], ids, coords, None)[0]

    def decode_derivatives(
        self,
        context: Context,
        coords: Tensor,
        ids: Tensor | None = None,
        *,
        order: int,
        direction: int | Tensor = 0,
    ) -> Tensor:
        """Exact derivatives d^q ŷ(c + s u)/ds^q at s = 0, q = 0..order: (order + 1, B, Q, V).

        `direction` u is a coordinate axis (0 = t: ∂^q ŷ/∂t^q) or a (B, Q, C) tensor of
        directions. Computed in the parameters' dtype with autocast off, by Taylor-mode
        propagation of the encoding's closed-form jet (and of the attention biases'
        closed-form jets); gradients reach every parameter through one ordinary backward.
        """
        check_coords(self.config, coords, "query coords")
        check_ids(self.config, ids, coords.shape[:2], "query ids")
        dtype = self.head.weight.dtype
        with autocast_off(coords.device):
            coords = coords.to(dtype)
            if isinstance(direction, int):
                u = torch.zeros_like(coords)
                u[..., direction] = 1.0
            else:
                u = direction.to(dtype).expand_as(coords)
            jet = self.coord_embed.jet(coords, order, direction)  # (K+1, B, Q, D)
            return taylor.to_derivatives(self._decode_jet(context.to(dtype), jet, ids, coords, u))

    def _decode_jet(
        self,
        context: Context,
        x: Tensor,
        ids: Tensor | None,
        coords: Tensor,
        direction: Tensor | None,
    ) -> Tensor:
        """Query-embedding jet (K+1, B, Q, D) at coords (B, Q, C) moving along direction
        (B, Q, C; None for order 0) -> prediction jet (K+1, B, Q, V)."""
        order, B = x.shape[0] - 1, x.shape[1]
        if context.memory.shape[0] not in (1, B):
            raise ValueError(f"context has batch size {context.memory.shape[0]}, queries {B}")
        if self.id_embed is not None:
            x = taylor.add0(x, self.id_embed(ids))
        x = taylor.dropout(x, self.config.dropout, self.training)
        mask = None if context.mask is None else key_padding(context.mask.expand(B, -1))
        memory_coords = None if context.coords is None else context.coords.expand(B, -1, -1)
        memory_ids = None if context.ids is None else context.ids.expand(B, -1)
        cache = context.tokens
        own: tuple[Tensor, Tensor, ChannelGroups] | None = None
        if cache is not None:  # each query's own channel: M tokens per query
            if ids is None:
                raise ValueError("a context with own-channel tokens needs query ids")
            own = (
                by_query(cache.coords, ids),  # (B, Q, M, C)
                by_query(cache.valid, ids)[:, None],  # (B, 1, Q, M)
                ChannelGroups.of(
                    ids, cache.valid.shape[0], self.config.n_ids, cache.valid.shape[-1]
                ),
            )
        dims = 1 if context.time_only else None
        for i, (block, (k, v)) in enumerate(zip(self.decoder, context.kv, strict=True)):
            bias = None
            if block.bias is not None and memory_coords is not None:
                bias = block.bias(coords, memory_coords, direction, order, ids, memory_ids, dims)
            local = None
            if own is not None and cache is not None and block.local_bias is not None:
                own_coords, own_mask, groups = own
                kt, vt = (groups.rows_of(t) for t in cache.kv[i])
                local = LocalKeys(
                    kt, vt, groups, block.local_bias(coords, own_coords, direction, order), own_mask
                )
            x = block(x, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), mask, bias, local)
        x = taylor.layer_norm(x, self.ln_out.weight, self.ln_out.bias, self.ln_out.eps)
        out = taylor.linear(x, self.head.weight, self.head.bias)
        if self.config.interpolant == "none":
            return out
        if own is not None and cache is not None and ids is not None:
            key_times, key_valid = own[0][..., 0], own[1][:, 0]
            key_values = by_query(cache.values, ids)
        else:  # the memory is the observed tokens themselves
            if context.values is None or context.coords is None:
                raise ValueError("the interpolant needs the context's observed values")
            key_times, key_values = context.coords[:, None, :, 0], context.values[:, None]
            key_valid = torch.ones_like(key_times, dtype=torch.bool)
            if context.mask is not None:
                key_valid = key_valid & context.mask[:, None]
            if context.ids is not None and ids is not None:
                key_valid = key_valid & (context.ids[:, None, :] == ids[..., None])
        along = None if direction is None else direction[..., 0]
        key_values = key_values.to(out.dtype)
        base = interpolant.linear_jet(
            coords[..., 0], key_times, key_values, key_valid, order, along
        )
        gain = self.interpolant_gain
        if self.channel_gain is not None and ids is not None:
            gain = gain + self.channel_gain(ids)
        out = out + base * gain
        if self.readout is not None:
            if cache is not None and ids is not None:  # once per channel, then per query
                keys = self.readout.key(self.coord_embed(cache.coords.to(out.dtype)))
                keys = by_query(keys, ids)
            elif context.coords is not None:
                keys = self.readout.key(self.coord_embed(context.coords[:, None].to(out.dtype)))
            out = out + self.readout(x, keys, key_values, key_valid)
        return out
