"""The Continuous Spatiotemporal Transformer done right: mode "cst", in one file.

References:
1) de Oliveira Fonseca, Zappala, Ortega Caro, van Dijk, "Continuous Spatiotemporal
   Transformer", ICML 2023 (arXiv 2301.13338): the method; `paper.py` holds its release.
2) Jaegle et al., "Perceiver IO", ICLR 2022, and Azabou et al., "A Unified, Scalable Framework
   for Neural Population Decoding" (POYO), NeurIPS 2023: the latent bottleneck.

A token is a value vector (V numbers: a ΔF/F sample, a flattened p×p patch, a 2-d state), a
continuous coordinate (C numbers: t, or t, y, x) and the index of its channel (a ROI, a
patch). Time is in frames from the window's start, space in field-of-view units; the
frame's length in seconds comes with the window, so the model sees kinetics in seconds
(a GCaMP6s decay is as long at 7.5 Hz as at 120 Hz) and sampling in frames. Missing
observations are absent tokens; batches of unequal length are padded and masked.

The network transfers: nothing in it belongs to one recording. A channel is known by a
descriptor computed from the recording (`data.channel_features`: autocorrelations, noise
share, skew, frame length), embedded and added to its tokens and queries, so one model
can predict any recording, with any number of ROIs, planes and rate. Per-channel
parameters (`n_ids` > 0: an identity embedding, the interpolant's gain per channel, a
blend) are optional parts that a fit to one recording adds.

- a context encoder reads the observed tokens only. They cross-attend into latents on a
  time grid over the window (Perceiver IO / POYO), the latents self-attend, and each
  decoder layer's keys and values of the result are cached in a `Context`;
- a query decoder embeds a query coordinate (Fourier features of seconds and place, plus
  the channel's descriptor) and cross-attends to the context and to the raw tokens of its
  own channel (`_gather`). Queries never attend to each other, so ŷ(q) depends only on q
  and the observations, and a new query costs one small decoder pass;
- every cross-attention adds a learned `CoordBias`, -Σ_d γ_hd (c_q,d - c_k,d)², to its
  scores: attention is local from the first step (content alone gives uniform attention,
  and a decoder that averages a window receives almost no gradient);
- with `interpolant="linear"` the decoder predicts a correction to the linear interpolant
  in time of the query's own channel (`interpolant`): softmax attention, a convex
  combination, cannot express a spline's negative weights and flattens transients larger
  than training showed, while the interpolant passes observed amplitudes through;
  `readout_rank` > 0 adds a learned signed linear readout of the same samples (`Readout`),
  which smooths noise in proportion to the data. A learned gain on the interpolant
  (`learn_gain`) shrinks it towards zero instead, and with it every transient: a prior
  pretrained that way predicted 0.61 of an unseen 9-sd GCaMP6f transient; the prior
  keeps the gain at 1;
- a fitted model blends each channel's prediction with that interpolant,
  I + α_c (ŷ - I), α_c chosen on validation frames (`channel_blend`): a channel on which
  the model does worse than linear interpolation falls back towards it;
- derivatives of ŷ with respect to the query coordinate are exact at every order: the
  encoding gives the coordinate jet in closed form and `taylor` carries it through the
  decoder (`decode_derivatives`), while the encoder keeps the fast SDPA kernels.

Why a latent bottleneck: a window holds 10-20k observed tokens (300 ROIs × 64 frames).
Self-attention over all of them costs O(N²) per layer, far too slow on 2 CPU cores. With L
latents the encoder costs O(N·L + L²) and decoding O(Q·(L + W)), independent of N. For few
tokens (the IE spirals: 10 per curve) set `n_latent_times=0`: the encoder then
self-attends over the observed tokens and the decoder attends to them directly.

The file is longer than ~500 lines for a reason: the encoder, both decoding paths (the
jet, for training and derivatives; the grouped one, for inference) and the interpolant
output share the `Context`, and split across files one forward pass could not be read in
one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

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
FRAME_RESOLUTION = 6.0  # radians per frame beyond which time features fade (a sixth of a turn)
QUERY_BLOCK = 4096  # queries per decoder pass at inference (`CST.decode`)


@dataclass
class CSTConfig(NetworkConfig):
    window: int = (
        32  # frames a window spans: the latent grid and the attention widths scale with it
    )
    n_decoder_layers: int = 1  # query decoder blocks
    n_fourier: int = 64  # 2 * n_fourier Fourier features
    time_band: tuple[float, float] | None = None  # Hz: log-spaced time frequencies (seconds)
    fourier_scale: float | tuple[float, ...] = 8.0  # sd of random frequencies, cycles per unit
    fourier_seed: int = 0
    n_latent_times: int = 16  # latent time grid over the window; 0 = no latents
    latents_per_time: int = 4
    interpolant: Interpolant = "none"  # "linear" = predict a correction to it
    learn_gain: bool = True  # learn a global gain on the interpolant; False keeps it at 1
    readout_rank: int = 0  # > 0 adds a signed linear readout of own-channel samples
    channel_features: int = 0  # F: length of the channel descriptors the model reads; 0 = none
    channel_gain: bool = False  # with n_ids: the interpolant's gain also learned per channel

    def blocks(self) -> int:
        return self.n_layers + self.n_decoder_layers + int(self.n_latent_times > 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.time_band, list):  # from a checkpoint or a TOML file
            self.time_band = (float(self.time_band[0]), float(self.time_band[1]))
        if isinstance(self.fourier_scale, list):
            self.fourier_scale = tuple(self.fourier_scale)
        for name in ("window", "n_fourier"):
            if getattr(self, name) < 1:
                raise ValueError(f"CSTConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_decoder_layers", "n_latent_times", "channel_features", "readout_rank"):
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
        if self.readout_rank and self.interpolant == "none":
            raise ValueError("CSTConfig.readout_rank needs an interpolant (it reads the same keys)")
        band = self.time_band
        if band is not None and not (len(band) == 2 and 0 < band[0] < band[1]):
            raise ValueError(
                f"CSTConfig.time_band must be (low, high) Hz with 0 < low < high, got {band}"
            )
        scale = self.fourier_scale
        if isinstance(scale, tuple) and len(scale) != self.coord_dims:
            raise ValueError(
                f"CSTConfig.fourier_scale has {len(scale)} entries but coord_dims is "
                f"{self.coord_dims}: give one scale, or one per coordinate"
            )


@dataclass
class Context:
    """An encoded window: everything `CST.decode` needs, computed once per window."""

    memory: Tensor  # (B, L, D) latents, or observed tokens when there are none, after the encoder
    kv: list[tuple[Tensor, Tensor]]  # per decoder layer, keys and values (B, H, L, D/H)
    mask: Tensor | None  # (B, L) True for real entries; None when there is no padding
    coords: Tensor | None = None  # (B, L, C) coordinates of the memory entries
    ids: Tensor | None = None  # (B, L) channels of the memory entries (None for latents)
    time_only: bool = False  # memory entries have a time but no place (latents)
    tokens: TokenCache | None = None  # raw tokens by channel (latents with channels)
    values: Tensor | None = None  # (B, L, V) observed values of the memory entries (no latents)
    channels: Tensor | None = None  # (B or 1, n_channels, D) embedded channel descriptors
    frame_seconds: Tensor | None = None  # (B,) seconds per unit of time (a frame), or None
    n_channels: int = 0  # channel count of the window's table (the own-channel cache's rows)

    def to(self, dtype: torch.dtype) -> Context:
        """The same context with floating tensors in `dtype`."""

        def cast(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype)

        return replace(
            self,
            memory=self.memory.to(dtype),
            kv=[(k.to(dtype), v.to(dtype)) for k, v in self.kv],
            coords=cast(self.coords),
            tokens=None if self.tokens is None else self.tokens.to(dtype),
            values=cast(self.values),
            channels=cast(self.channels),
            frame_seconds=cast(self.frame_seconds),
        )


class CST(nn.Module):
    """The CST: `encode(values, coords, ids, mask, channels=, seconds_per_frame=) -> Context`,
    then `decode(context, query_coords, query_ids) -> (B, Q, V)` and
    `decode_derivatives(...) -> (K+1, B, Q, V)`; `forward` does both.
    """

    channel_blend: Tensor | None
    latent_coords: Tensor  # (T, C) the latent time grid, with latents
    read_in: CrossBlock  # with latents
    ln_tokens: nn.LayerNorm  # with latents
    decoder: nn.ModuleList  # of CrossBlock

    def __init__(self, config: CSTConfig) -> None:
        super().__init__()
        self.config = config
        D, C, W = config.d_model, config.coord_dims, config.window
        self.value_embed = nn.Linear(config.value_dim, D)
        self.id_embed = nn.Embedding(config.n_ids, D) if config.n_ids else None
        self.coord_embed = FourierEncoding(
            C, config.n_fourier, config.fourier_scale, D, config.fourier_seed, config.time_band
        )
        self.channel_embed: nn.Sequential | None = None
        if config.channel_features:
            self.channel_embed = nn.Sequential(
                nn.Linear(config.channel_features, D), nn.GELU(), nn.Linear(D, D)
            )
        self.latent_embed: nn.Parameter | None = None
        if config.n_latent_times:
            latent_coords = torch.zeros(config.n_latent_times, C)
            latent_coords[:, 0] = torch.linspace(0.0, W - 1.0, config.n_latent_times)  # no place
            self.register_buffer("latent_coords", latent_coords, persistent=False)
            self.latent_embed = nn.Parameter(torch.zeros(config.latents_per_time, D))
            self.ln_tokens = nn.LayerNorm(D)
            self.read_in = CrossBlock(config, coord_dims=1, window=W)  # latents: a time only
        self.encoder = nn.ModuleList([Block(config, pre_norm=True) for _ in range(config.n_layers)])
        self.ln_memory = nn.LayerNorm(D)
        latents, ids = config.n_latent_times > 0, config.n_ids > 0
        self.decoder = nn.ModuleList(
            [
                CrossBlock(
                    config,
                    coord_dims=1 if latents else C,
                    use_ids=ids and not latents,
                    local=latents,
                    window=W,
                )
                for _ in range(config.n_decoder_layers)
            ]
        )
        self.ln_out = nn.LayerNorm(D)
        self.head = nn.Linear(D, config.value_dim)
        if config.interpolant != "none":  # noisy samples call for less of it; at 1 (not
            # learned) an amplitude larger than any in training passes through unshrunk
            gain = torch.ones(config.value_dim)
            if config.learn_gain:
                self.interpolant_gain = nn.Parameter(gain)
            else:
                self.register_buffer("interpolant_gain", gain)
        self.channel_gain: nn.Embedding | None = None
        if config.channel_gain and config.n_ids and config.interpolant != "none":
            self.channel_gain = nn.Embedding(config.n_ids, config.value_dim)
        self.readout: interpolant.Readout | None = None
        if config.readout_rank:
            self.readout = interpolant.Readout(D, config.value_dim, config.readout_rank)
        # α_c of I + α_c (ŷ - I): set by a fit on its validation frames, 1 = the model
        blend = config.n_ids and config.interpolant != "none"
        self.register_buffer(
            "channel_blend", torch.ones(config.n_ids, config.value_dim) if blend else None
        )

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

    def blocks(self) -> list[CrossBlock]:
        """The query decoder's blocks, typed."""
        return [block for block in self.decoder if isinstance(block, CrossBlock)]

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
        per-channel tables are left out: they grow with the recording, not with the model.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_ids:
            for table in (self.id_embed, self.channel_gain):
                n -= 0 if table is None else table.weight.numel()
        return n

    # ---- embeddings -----------------------------------------------------------------------

    def seconds_scale(
        self, coords: Tensor, frame_seconds: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """For coordinates (B, ..., C): what turns them into seconds (B, ..., C: the frame's
        length for time, 1 for space) and the features' gains (B, ..., 2F) that fade those
        finer than a sixth of a frame (`FourierEncoding.attenuation`); None when
        ``frame_seconds`` (B,) is None (time already in the Fourier units)."""
        if frame_seconds is None:
            return None
        seconds = frame_seconds.to(coords.dtype)
        lead = (seconds.shape[0], *([1] * (coords.dim() - 2)))
        scale = torch.ones(coords.shape[-1], dtype=coords.dtype, device=coords.device)
        scale = scale.expand(*lead, -1).clone()
        scale[..., 0] = seconds.view(lead)
        gain = self.coord_embed.attenuation(seconds, FRAME_RESOLUTION)
        return scale, gain.view(*lead, -1)

    def embed_coords(self, coords: Tensor, frame_seconds: Tensor | None) -> Tensor:
        """Fourier embedding (B, ..., D) of coordinates (B, ..., C), time in seconds."""
        scaled = self.seconds_scale(coords, frame_seconds)
        if scaled is None:
            return self.coord_embed(coords)
        return self.coord_embed(coords * scaled[0], scaled[1])

    def embed_channels(self, channels: Tensor | None) -> Tensor | None:
        """Embedded channel descriptors (B or 1, n_channels, D), or None."""
        if self.channel_embed is None:
            return None
        if channels is None or channels.shape[-1] != self.config.channel_features:
            raise ValueError(
                f"this model reads channel descriptors of {self.config.channel_features} "
                f"features: pass channels=(B, n_channels, {self.config.channel_features})"
            )
        return self.channel_embed(channels)

    def embed_tokens(
        self,
        values: Tensor,
        coords: Tensor,
        ids: Tensor | None = None,
        channels: Tensor | None = None,
        frame_seconds: Tensor | None = None,
    ) -> Tensor:
        """Value + coordinate (+ channel) embedding, (B, N, D); input noise when training."""
        if self.training and self.config.input_noise > 0:
            values = values + self.config.input_noise * torch.randn_like(values)
        x = self.value_embed(values) + self.embed_coords(coords, frame_seconds)
        if channels is not None and ids is not None:
            x = x + by_query(channels, ids)
        if self.id_embed is not None:
            x = x + self.id_embed(ids)
        return x

    # ---- the model ------------------------------------------------------------------------

    def forward(
        self,
        values: Tensor,
        coords: Tensor,
        ids: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        query_coords: Tensor,
        query_ids: Tensor | None = None,
        channels: Tensor | None = None,
        seconds_per_frame: Tensor | None = None,
    ) -> Tensor:
        """Predict values (B, Q, V) at query coordinates (B, Q, C) from observed tokens."""
        context = self.encode(
            values, coords, ids, mask, channels=channels, seconds_per_frame=seconds_per_frame
        )
        return self.decode(context, query_coords, query_ids)

    def encode(
        self,
        values: Tensor,
        coords: Tensor,
        ids: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        channels: Tensor | None = None,
        seconds_per_frame: Tensor | None = None,
    ) -> Context:
        """Encode the observed tokens of a window into a Context.

        Args:
            values: (B, N, V) observed values.
            coords: (B, N, C) their coordinates: t in frames from the window's start, then
                y, x in field-of-view units.
            ids: (B, N) integer channel of each token (needed with latents, for the query's
                own channel, and whenever `n_ids` > 0).
            mask: (B, N) bool, True for real tokens, False for padding; None = all real.
            channels: (B or 1, n_channels, F) channel descriptors, when `channel_features`.
            seconds_per_frame: (B,) the frame's length; None = time units are the Fourier
                units themselves.
        """
        check_tokens(self.config, values, coords, ids, mask, ids_optional=True)
        seconds = seconds_per_frame
        embedded = self.embed_channels(channels)
        n_channels = self._n_channels(ids, embedded)
        x = self.embed_tokens(values, coords, ids, embedded, seconds)
        x = drop.dropout(x, self.config.dropout, self.training)
        padding = None if mask is None or bool(mask.all()) else key_padding(mask)  # no copies
        if self.latent_embed is None:
            for block in self.encoder:
                x = block(x, mask=padding)
            memory = self.ln_memory(x)
            return Context(
                memory,
                [block.attn.keys_values(memory) for block in self.blocks()],
                mask,
                coords=coords,
                ids=ids,
                values=values,
                channels=embedded,
                frame_seconds=seconds,
                n_channels=n_channels,
            )
        B, D = x.shape[0], x.shape[-1]
        latent_coords = self.latent_coords.to(coords.dtype)[None].expand(B, -1, -1)  # (B, T, C)
        times = self.embed_coords(latent_coords, seconds)  # (B, T, D)
        latents = times[:, :, None, :] + self.latent_embed  # (B, T, P, D)
        latents = latents.reshape(B, -1, D)  # (B, L, D), L = T·P
        latent_coords = latent_coords.repeat_interleave(self.config.latents_per_time, 1)
        tokens = self.ln_tokens(x)
        k, v = self.read_in.attn.keys_values(tokens)  # (B, H, N, D/H)
        assert self.read_in.bias is not None  # the read-in always has one
        bias = self.read_in.bias(latent_coords, coords, dims=1)
        z = self.read_in(latents[None], k, v, padding, bias)[0]  # (B, L, D)
        for block in self.encoder:
            z = block(z)
        memory = self.ln_memory(z)
        if ids is None:
            raise ValueError("a model with latents needs the channel of each token: pass ids")
        table, valid = channel_table(ids, mask, n_channels)
        projections = [layer for block in self.blocks() if (layer := block.local_kv) is not None]
        cache = TokenCache.by_channel(
            tokens, coords, values, table, valid, projections, self.config.n_heads
        )
        return Context(
            memory,
            [block.attn.keys_values(memory) for block in self.blocks()],
            None,
            coords=latent_coords,
            time_only=True,
            tokens=cache,
            channels=embedded,
            frame_seconds=seconds,
            n_channels=n_channels,
        )

    def _n_channels(self, ids: Tensor | None, channels: Tensor | None) -> int:
        """Rows of the window's channel table: the descriptors', else the identities'."""
        if channels is not None:
            return channels.shape[1]
        if self.config.n_ids:
            return self.config.n_ids
        if ids is None or ids.numel() == 0:
            return 0
        return ids.shape[1] if ids.device.type == "meta" else int(ids.max()) + 1

    def decode(self, context: Context, coords: Tensor, ids: Tensor | None = None) -> Tensor:
        """Predictions (B, Q, V) at query coordinates (B, Q, C) with channels (B, Q).

        Without gradients (inference) from a one-window context with own-channel tokens, the
        queries are first arranged one channel group per batch row (`ChannelGroups.arrange`):
        each decoder layer then attends to [latents ; the group's own tokens] in one fused
        kernel, and per-channel tables are read once per group instead of once per query.
        Queries that arrive grouped (all of a channel's in a row) are arranged without a copy,
        and they are decoded `QUERY_BLOCK` at a time, so that each layer's temporaries stay
        in the CPU's cache (and below the size glibc maps afresh, page by page, per call).
        """
        check_coords(self.config, coords, "query coords")
        check_ids(self.config, ids, coords.shape[:2], "query ids", optional=True)
        cache = context.tokens
        if torch.is_grad_enabled() or cache is None or ids is None or cache.valid.shape[0] != 1:
            x = self.embed_coords(coords, context.frame_seconds)[None]
            return self._decode_jet(context, x, ids, coords, None)[0]
        groups = ChannelGroups.of(ids, 1, context.n_channels, cache.valid.shape[-1])
        rows = groups.group_rows(context.n_channels)
        grouped_coords, grouped_ids = groups.arrange(coords), groups.arrange(ids)  # (G, S, ...)
        per = max(1, QUERY_BLOCK // groups.size)  # groups per decoder pass
        parts = []
        for g in range(0, rows.shape[0], per):
            at, at_ids = grouped_coords[g : g + per], grouped_ids[g : g + per]
            x = self.embed_coords(at, context.frame_seconds)[None]
            parts.append(self._decode_jet(context, x, at_ids, at, None, rows[g : g + per]))
        return groups.restore(torch.cat(parts, 1), coords.shape[0])[0]

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

        `direction` u is a coordinate axis (0 = t: ∂^q ŷ/∂t^q, t in frames) or a (B, Q, C)
        tensor of directions. Computed in the parameters' dtype with autocast off, by
        Taylor-mode propagation of the encoding's closed-form jet (and of the attention
        biases' closed-form jets); gradients reach every parameter through one backward.
        """
        check_coords(self.config, coords, "query coords")
        check_ids(self.config, ids, coords.shape[:2], "query ids", optional=True)
        dtype = self.head.weight.dtype
        with autocast_off(coords.device):
            coords = coords.to(dtype)
            if isinstance(direction, int):
                u = torch.zeros_like(coords)
                u[..., direction] = 1.0
            else:
                u = direction.to(dtype).expand_as(coords)
            context = context.to(dtype)
            scaled = self.seconds_scale(coords, context.frame_seconds)
            if scaled is None:
                jet = self.coord_embed.jet(coords, order, u)  # (K+1, B, Q, D)
            else:
                scale, gain = scaled
                jet = self.coord_embed.jet(coords * scale, order, u * scale, gain)
            return taylor.to_derivatives(self._decode_jet(context, jet, ids, coords, u))

    def _decode_jet(
        self,
        context: Context,
        x: Tensor,
        ids: Tensor | None,
        coords: Tensor,
        direction: Tensor | None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Query-embedding jet (K+1, B, Q, D) at coords (B, Q, C) moving along direction
        (B, Q, C; None for order 0) -> prediction jet (K+1, B, Q, V). With `rows` (B,)
        (order 0), the queries of batch row b all read own-channel row rows[b] (`decode`)."""
        order, B = x.shape[0] - 1, x.shape[1]
        if context.memory.shape[0] not in (1, B):
            raise ValueError(f"context has batch size {context.memory.shape[0]}, queries {B}")
        if context.channels is not None and ids is not None:
            x = taylor.add0(x, by_query(context.channels, ids))
        if self.id_embed is not None:
            x = taylor.add0(x, self.id_embed(ids))
        x = taylor.dropout(x, self.config.dropout, self.training)
        mask = None if context.mask is None else key_padding(context.mask.expand(B, -1))
        memory_coords = None if context.coords is None else context.coords.expand(B, -1, -1)
        memory_ids = None if context.ids is None else context.ids.expand(B, -1)
        cache = context.tokens
        own: tuple[Tensor, Tensor, Tensor] | None = None
        groups: ChannelGroups | None = None
        if cache is not None:  # each query's own channel: M tokens per query, or per row
            if ids is None:
                raise ValueError("a context with own-channel tokens needs query ids")
            if rows is None:
                groups = ChannelGroups.of(
                    ids, cache.valid.shape[0], context.n_channels, cache.valid.shape[-1]
                )
            lookup = ids if rows is None else rows[:, None]  # (B, Q), or (B, 1) by row
            own = (
                lookup,
                by_query(cache.coords, lookup),  # (B, Q or 1, M, C)
                by_query(cache.valid, lookup)[:, None],  # (B, 1, Q or 1, M)
            )
        dims = 1 if context.time_only else None
        for i, (block, (k, v)) in enumerate(zip(self.blocks(), context.kv, strict=True)):
            bias = None
            if rows is None and block.bias is not None and memory_coords is not None:
                bias = block.bias(coords, memory_coords, direction, order, ids, memory_ids, dims)
            local = None
            if own is not None and cache is not None and block.local_bias is not None:
                lookup, own_coords, own_mask = own
                if groups is None:  # arranged by row: one bias for [latents ; own tokens]
                    assert memory_coords is not None  # the latents' times
                    kt, vt = (t.index_select(1, lookup[:, 0]) for t in cache.kv[i])
                    bias = block.joint_bias(coords, memory_coords, own_coords, own_mask)
                    local = LocalKeys(kt, vt, None, None, own_mask)
                else:
                    kt, vt = (groups.rows_of(t) for t in cache.kv[i])
                    own_bias = block.local_bias(coords, own_coords, direction, order, dims=1)
                    local = LocalKeys(kt, vt, groups, own_bias, own_mask)
            x = block(x, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), mask, bias, local)
        x = taylor.layer_norm(x, self.ln_out.weight, self.ln_out.bias, self.ln_out.eps)
        out = taylor.linear(x, self.head.weight, self.head.bias)
        if self.config.interpolant == "none":
            return out
        if own is not None and cache is not None and ids is not None:
            key_times, key_valid = own[1][..., 0], own[2][:, 0]
            key_values = by_query(cache.values, own[0])
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
        # the interpolant passes observed amplitudes through: kept in full precision (bf16
        # would round a value of 10 by 0.04), like everything added to it below
        full = torch.promote_types(out.dtype, torch.float32)
        out, x, key_values, key_times = (t.to(full) for t in (out, x, key_values, key_times))
        base = interpolant.linear_jet(
            coords[..., 0].to(full), key_times, key_values, key_valid, order, along
        )
        gain = self.interpolant_gain
        if self.channel_gain is not None and ids is not None:
            gain = gain + self.channel_gain(ids)
        out = out + base * gain
        if self.readout is not None:
            if own is not None and cache is not None:  # once per channel (or row), not query
                key_coords = (cache.coords if groups is not None else own[1]).to(out.dtype)
                keys = self.readout.key(self.embed_coords(key_coords, context.frame_seconds))
                if groups is not None:
                    keys = by_query(keys, own[0])
            elif context.coords is not None:
                key_coords = context.coords[:, None].to(out.dtype)
                keys = self.readout.key(self.embed_coords(key_coords, context.frame_seconds))
            with autocast_off(out.device):  # a signed sum of observed values: full precision
                out = out + self.readout(x, keys.to(full), key_values, key_valid)
        if ids is not None and self.channel_blend is not None:
            out = base + self.channel_blend[ids].to(out.dtype) * (out - base)
        return out
