"""The Continuous Spatiotemporal Transformer (CST) network, all three modes in this file.

References:
1) de Oliveira Fonseca, Zappala, Ortega Caro, van Dijk, "Continuous Spatiotemporal
   Transformer", ICML 2023 (arXiv 2301.13338), and its release github.com/vandijklab/CST:
   modes "paper" and "transformer".
2) Jaegle et al., "Perceiver IO", ICLR 2022, and Azabou et al., "A Unified, Scalable Framework
   for Neural Population Decoding" (POYO), NeurIPS 2023: the latent bottleneck of mode "cst".

A token is a value vector (V numbers: a ΔF/F sample, a flattened p×p patch, a 2-d state), a
continuous coordinate (C numbers: t, or t, y, x) and optionally an integer identity (a ROI).
Missing observations are absent tokens; batches of unequal length are padded and masked.

Mode "cst" (default) is the paper's idea done right:
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
  identities, each query also attends to the raw tokens of its own channel (`TokenCache`,
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

Mode "paper" is the published architecture, as a baseline: real tokens plus dummy tokens at
the query coordinates (values linearly interpolated, see `dummies`), Gaussian input noise in
training, value embedding plus a linear embedding of the coordinates, a post-LayerNorm
encoder over all tokens jointly and the release's head at every token. Mode "transformer"
is the same network, trained with plain MSE instead of the Sobolev loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cst_neuro.model import dropout as drop
from cst_neuro.model import interpolant, taylor
from cst_neuro.model.dummies import add_dummy_tokens
from cst_neuro.model.encoding import FourierEncoding

Mode = Literal["cst", "transformer", "paper"]
MODES: tuple[str, ...] = ("cst", "transformer", "paper")
Interpolant = Literal["none", "linear"]
INTERPOLANTS: tuple[str, ...] = ("none", "linear")


def _autocast_off(device: torch.device) -> AbstractContextManager[object]:
    """A block with autocast off on `device` (a no-op where autocast does not exist)."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know, e.g. "meta"
        return nullcontext()


def _key_padding(mask: Tensor | None) -> Tensor | None:
    """(B, N) True-for-real mask -> (B, 1, 1, N), broadcast over heads and queries."""
    return None if mask is None else mask[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention: queries from x, keys and values from a source (x itself by default).

    Uses torch's scaled_dot_product_attention when available (checked once, here), else a
    hand-written path doing the same maths. `forward_jet` propagates Taylor jets of the
    queries through attention to fixed keys and values (the query decoder).
    """

    def __init__(self, config: CSTConfig) -> None:
        super().__init__()
        D = config.d_model
        self.n_heads = config.n_heads
        self.q = nn.Linear(D, D)
        self.kv = nn.Linear(D, 2 * D)
        self.proj = nn.Linear(D, D)
        self.attn_dropout = config.attn_dropout
        self.dropout = config.dropout
        self.flash = config.use_sdpa and hasattr(F, "scaled_dot_product_attention")
        if config.use_sdpa and not self.flash:
            warnings.warn(
                "torch lacks scaled_dot_product_attention: using the slower hand-written attention",
                stacklevel=2,
            )

    def split_heads(self, x: Tensor) -> Tensor:
        """(..., N, D) -> (..., H, N, D/H)."""
        *lead, N, D = x.shape
        return x.view(*lead, N, self.n_heads, D // self.n_heads).transpose(-2, -3)

    def merge_heads(self, y: Tensor) -> Tensor:
        """(..., H, N, D/H) -> (..., N, D)."""
        *lead, H, N, hd = y.shape
        return y.transpose(-2, -3).reshape(*lead, N, H * hd)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a source (B, N, D), each (B, H, N, D/H)."""
        k, v = self.kv(source).split(self.kv.out_features // 2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None = None
    ) -> Tensor:
        """softmax(q kᵀ/√d + bias) v with a boolean key mask (True = attend): (B, H, Q, D/H)."""
        p = self.attn_dropout if self.training else 0.0
        if bias is not None and mask is not None:
            bias, mask = bias.masked_fill(~mask, float("-inf")), None
        attn_mask = mask if bias is None else bias
        if self.flash:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))  # (B, H, Q, N)
        if bias is not None:
            scores = scores + bias
        elif mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return drop.dropout(F.softmax(scores, dim=-1), p, training=p > 0) @ v

    def forward(
        self, x: Tensor, source: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """x (B, Q, D) attends to source (B, N, D), masked by (B, 1, 1, N): (B, Q, D)."""
        k, v = self.keys_values(x if source is None else source)
        y = self.attend(self.split_heads(self.q(x)), k, v, mask)
        return drop.dropout(self.proj(self.merge_heads(y)), self.dropout, self.training)

    def forward_jet(
        self,
        x: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        bias: Tensor | None = None,
        local: LocalKeys | None = None,
    ) -> Tensor:
        """Jet x (K+1, B, Q, D) attends to fixed k, v (B, H, N, D/H): jet (K+1, B, Q, D).

        `bias` is a jet (K+1, B, H, Q, N) added to the scores (its order-0 part alone when
        x has order 0). `local` adds keys of each query's own (B, Q, H, M, D/H), sharing
        one softmax with the N common keys.
        """
        q = self.split_heads(taylor.linear(x, self.q.weight, self.q.bias))  # (K+1, B, H, Q, hd)
        if x.shape[0] == 1 and local is None:  # plain values: the fast kernel
            bias = None if bias is None else bias.squeeze(0)  # views: no zero-filled gradients
            y = self.attend(q.squeeze(0), k, v, mask, bias).unsqueeze(0)
        else:
            scale = 1.0 / math.sqrt(k.shape[-1])
            scores = _masked_jet((q @ k.transpose(-2, -1)) * scale, bias, mask)
            n = scores.shape[-1]
            if local is not None:
                own = local.groups.matmul(q, local.k.transpose(-2, -1)) * scale
                scores = torch.cat([scores, _masked_jet(own, local.bias, local.mask)], -1)
            p = taylor.dropout(taylor.softmax(scores), self.attn_dropout, self.training)
            common, own_p = p.split([n, p.shape[-1] - n], -1)
            y = common @ v  # (K+1, B, H, Q, hd)
            if local is not None:
                y = y + local.groups.matmul(own_p, local.v)
        y = taylor.linear(self.merge_heads(y), self.proj.weight, self.proj.bias)
        return taylor.dropout(y, self.dropout, self.training)


def _masked_jet(scores: Tensor, bias: Tensor | None, mask: Tensor | None) -> Tensor:
    """Score jet plus a bias jet; masked keys get -inf at order 0 and 0 above it."""
    if bias is not None:
        scores = scores + bias if bias.shape[0] == scores.shape[0] else taylor.add0(scores, bias[0])
    if mask is None:
        return scores
    if scores.shape[0] == 1:
        return scores.masked_fill(~mask, float("-inf"))
    return torch.where(mask, scores, torch.where(taylor.orders(scores) == 0, -math.inf, 0.0))


class CoordBias(nn.Module):
    """A learned attention bias from where a query is relative to a key, exact in the query.

    bias_h(c_q, c_k) = -Σ_d γ_hd (c_q,d - c_k,d)² + β_h [id_q = id_k]: each head weighs keys
    by a Gaussian of their distance to the query (an ALiBi-like relative encoding) and,
    with identities, prefers the query's own channel. γ_hd = exp(θ_hd) starts at widths
    spread geometrically over heads, from 1/64 to 1/2 of a window. A query's coordinate
    along a line c + s u is linear in s, so the bias is a polynomial of degree 2 in s and its
    Taylor jet is exact and closed-form: attention can be local from the first step without
    giving up exact derivatives.
    """

    def __init__(self, n_heads: int, coord_dims: int, use_ids: bool) -> None:
        super().__init__()
        widths = torch.logspace(math.log10(1 / 64), math.log10(1 / 2), n_heads)
        gamma = (1.0 / (2 * widths**2)).log()
        self.log_gamma = nn.Parameter(gamma[:, None].repeat(1, coord_dims))  # (H, C)
        self.id_weight = nn.Parameter(torch.full((n_heads,), 2.0)) if use_ids else None

    def forward(
        self,
        coords: Tensor,
        key_coords: Tensor,
        direction: Tensor | None = None,
        order: int = 0,
        ids: Tensor | None = None,
        key_ids: Tensor | None = None,
        dims: int | None = None,
    ) -> Tensor:
        """Bias jet (order + 1, B, H, Q, N) of queries (B, Q, C) moving along `direction`
        (B, Q, C), against keys at (B, N, C), or per query (B, Q, N, C); `dims` keeps only the
        first coordinates (1 = time: latents have no place)."""
        gamma = self.log_gamma.exp()[:, :dims].T.to(coords.dtype)  # (C', H)
        coords, key_coords = coords[..., :dims], key_coords[..., :dims]
        if key_coords.dim() == 3:
            key_coords = key_coords[:, None]
        delta = coords[:, :, None, :] - key_coords  # (B, Q, N, C')
        jet = [_by_head(delta * delta, -gamma)]  # (B, H, Q, N)
        if order >= 1:
            u = direction[..., :dims].to(coords.dtype)[:, :, None, :]  # type: ignore[index]
            jet.append(_by_head(delta * u, -2 * gamma))
        if order >= 2:
            jet.append(_by_head(u * u, -gamma).expand_as(jet[0]))
        jet += [torch.zeros_like(jet[0])] * (order - 2)
        out = jet[0][None] if order == 0 else torch.stack(jet)  # (K+1, B, H, Q, N)
        if self.id_weight is not None and ids is not None and key_ids is not None:
            same = (ids[:, :, None] == key_ids[:, None, :]).to(out.dtype)  # (B, Q, N)
            out = taylor.add0(out, self.id_weight.to(out.dtype)[:, None, None] * same[:, None])
        return out


def _by_head(x: Tensor, weight: Tensor) -> Tensor:
    """Σ_c x_c w_ch for x (B, Q, N, C) and w (C, H), laid out (B, H, Q, N) for the scores."""
    x = x.unsqueeze(1)  # (B, 1, Q, N, C)
    w = weight[:, :, None, None]  # (C, H, 1, 1)
    out = x[..., 0] * w[0]
    for c in range(1, x.shape[-1]):
        out = torch.addcmul(out, x[..., c], w[c])
    return out


@dataclass
class ChannelGroups:
    """Queries grouped by the cache row (window and channel) whose own keys they read.

    Own-channel attention then costs one batched matmul per layer, (S·(K+1), hd) @ (hd, M)
    for each group of S query slots and each head: gathering M keys for every query instead
    would copy, and in training scatter back, Q·M·D numbers per layer, more than all the
    layer's matmuls cost. When the spare slots of one group per cache row cost less than
    gathering the used rows' keys (a spare slot costs about a query, a gathered row about M),
    every row is a group and the keys are read in place. Otherwise (one long trace among
    single queries) the used rows are gathered; S is then the largest count, or the mean if
    that would leave most slots spare, and a row with more queries fills several groups.
    """

    rows: Tensor | None  # (G,) cache row of each group, flat over (window, channel); None = all
    members: Tensor  # (G·S,) query (flat over B·Q) in each group slot; spare slots read query 0
    slots: Tensor  # (B·Q,) each query's slot
    size: int  # S

    @classmethod
    def of(cls, ids: Tensor, cache_batch: int, n_ids: int, row_tokens: int) -> ChannelGroups:
        """Groups for query identities (B, Q) against a cache of `cache_batch` windows whose
        rows hold `row_tokens` (M) tokens each."""
        B, Q = ids.shape
        if cache_batch > 1:
            ids = ids + torch.arange(B, device=ids.device)[:, None] * n_ids
        flat, position = ids.reshape(-1), torch.arange(B * Q, device=ids.device)
        if ids.device.type == "meta":  # no data to group by: a group per query
            return cls(flat, position, position, 1)
        n_rows = cache_batch * n_ids
        counts = torch.bincount(flat, minlength=n_rows)
        size, used = int(counts.max()), int(torch.count_nonzero(counts))
        rows: Tensor | None = None
        if n_rows * size - B * Q <= used * row_tokens:  # every row a group: keys in place
            row, chunks = flat, torch.ones_like(counts)
        else:
            in_use, row, counts = torch.unique(flat, return_inverse=True, return_counts=True)
            if used * size > 2 * B * Q:
                size = -(-B * Q // used)
            chunks = -(-counts // size)  # groups per row in use
            rows = in_use.repeat_interleave(chunks)
        first_group = chunks.cumsum(0) - chunks
        order = torch.argsort(row, stable=True)
        rank = torch.empty_like(order)
        rank[order] = position - (counts.cumsum(0) - counts)[row[order]]  # among the row's
        slots = (first_group[row] + rank // size) * size + rank % size
        members = torch.zeros(int(chunks.sum()) * size, dtype=torch.long, device=ids.device)
        members[slots] = position
        return cls(rows, members, slots, size)

    def rows_of(self, table: Tensor) -> Tensor:
        """The groups' rows (H, G, ...) of a per-row table (H, rows, ...)."""
        return table if self.rows is None else table.index_select(1, self.rows)

    def matmul(self, x: Tensor, other: Tensor) -> Tensor:
        """Jet rows x (K+1, B, H, Q, n) times each query's own (H, G, n, m): (K+1, B, H, Q, m)."""
        K1, B, H, Q, n = x.shape
        G, m = other.shape[1], other.shape[-1]
        grouped = x.permute(2, 1, 3, 0, 4).reshape(H, B * Q, K1 * n).index_select(1, self.members)
        y = grouped.view(H, G, self.size * K1, n) @ other  # (H, G, S·(K+1), m)
        y = y.view(H, G * self.size, K1 * m).index_select(1, self.slots)
        return y.view(H, B, Q, K1, m).permute(3, 1, 0, 2, 4)


@dataclass
class LocalKeys:
    """Keys, values, bias jet and mask of keys that each query has for itself."""

    k: Tensor  # (H, G, M, D/H): keys of each group's channel, see `ChannelGroups`
    v: Tensor  # (H, G, M, D/H)
    groups: ChannelGroups
    bias: Tensor | None  # (K+1, B, H, Q, M)
    mask: Tensor  # (B, 1, Q, M) True = attend


class MLP(nn.Module):
    """Position-wise feed-forward: Linear, GELU, Linear, dropout."""

    def __init__(self, config: CSTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        return drop.dropout(self.proj(F.gelu(self.fc(x))), self.dropout, self.training)

    def forward_jet(self, x: Tensor) -> Tensor:
        """The same map on a jet (K+1, ..., D)."""
        h = taylor.gelu(taylor.linear(x, self.fc.weight, self.fc.bias))
        return taylor.dropout(
            taylor.linear(h, self.proj.weight, self.proj.bias), self.dropout, self.training
        )


class Block(nn.Module):
    """Self-attention then MLP in residual branches: pre-LN ("cst") or post-LN (the release)."""

    def __init__(self, config: CSTConfig, pre_norm: bool) -> None:
        super().__init__()
        eps = 1e-5 if pre_norm else 1e-12  # the release's TF-style LayerNorm
        self.pre_norm = pre_norm
        self.ln_1 = nn.LayerNorm(config.d_model, eps=eps)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), mask=mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, mask=mask))
        return self.ln_2(x + self.mlp(x))


class CrossBlock(nn.Module):
    """Cross-attention to fixed keys/values then MLP (pre-LN), on jets (K+1, B, Q, D).

    Reads tokens into latents (order 0) and decodes queries (any order). With `coord_dims`,
    the scores get a `CoordBias` (relative coordinates, and identities with `use_ids`);
    with `local`, each query also attends to keys of its own channel (`LocalKeys`), made by
    `local_kv` from the raw tokens, with their own bias `local_bias`.
    """

    def __init__(
        self,
        config: CSTConfig,
        coord_dims: int = 0,
        use_ids: bool = False,
        local: bool = False,
    ) -> None:
        super().__init__()
        D, H = config.d_model, config.n_heads
        self.ln_1 = nn.LayerNorm(D)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = MLP(config)
        self.bias = CoordBias(H, coord_dims, use_ids) if coord_dims else None
        self.local_kv = nn.Linear(D, 2 * D) if local else None
        self.local_bias = CoordBias(H, config.coord_dims, False) if local else None

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        local: LocalKeys | None = None,
    ) -> Tensor:
        ln_1, ln_2 = self.ln_1, self.ln_2
        x = x + self.attn.forward_jet(
            taylor.layer_norm(x, ln_1.weight, ln_1.bias, ln_1.eps), k, v, mask, bias, local
        )
        return x + self.mlp.forward_jet(taylor.layer_norm(x, ln_2.weight, ln_2.bias, ln_2.eps))


class PaperHead(nn.Module):
    """The release's output head: Linear, GELU, LayerNorm, then a bias-free Linear to values."""

    def __init__(self, config: CSTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_model)
        self.ln = nn.LayerNorm(config.d_model, eps=1e-12)
        self.out = nn.Linear(config.d_model, config.value_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.ln(F.gelu(self.fc(x))))


@dataclass
class CSTConfig:
    mode: Mode = "cst"
    value_dim: int = 1  # V: 1 for ROI traces, p*p for p×p patches, 2 for the IE spirals
    coord_dims: int = 3  # C: 3 = (t, y, x), 1 = time only
    n_ids: int = 0  # size of the learned identity table (e.g. ROIs in a recording); 0 = none
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4  # encoder blocks (latent self-attention in "cst")
    n_decoder_layers: int = 1  # "cst" query decoder
    d_ff: int = 384
    dropout: float = 0.1
    attn_dropout: float = 0.0
    input_noise: float = 0.0  # sd of Gaussian noise added to input values in training (paper: 0.1)
    n_fourier: int = 64  # "cst": 2 * n_fourier random Fourier features
    fourier_scale: float | tuple[float, ...] = 8.0  # sd of the frequencies, cycles per unit
    fourier_seed: int = 0
    n_latent_times: int = 32  # "cst": latent time grid over [0, 1]; 0 = no latents
    latents_per_time: int = 4
    use_sdpa: bool = True  # False forces the hand-written attention everywhere
    interpolant: Interpolant = "none"  # "cst": "linear" = predict a correction to it
    readout_rank: int = 0  # "cst": > 0 adds a signed linear readout of own-channel samples
    channel_gain: bool = False  # "cst" with ids: the interpolant's gain also learned per channel

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"CSTConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"CSTConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        for name in ("value_dim", "coord_dims", "d_model", "n_heads", "d_ff", "n_fourier"):
            if getattr(self, name) < 1:
                raise ValueError(f"CSTConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_ids", "n_layers", "n_decoder_layers", "n_latent_times"):
            if getattr(self, name) < 0:
                raise ValueError(f"CSTConfig.{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"CSTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.input_noise < 0:
            raise ValueError(f"CSTConfig.input_noise must be >= 0, got {self.input_noise}")
        if self.latents_per_time < 1:
            raise ValueError(
                f"CSTConfig.latents_per_time must be at least 1, got {self.latents_per_time}"
            )
        if self.interpolant not in INTERPOLANTS:
            raise ValueError(
                f"CSTConfig.interpolant must be one of {INTERPOLANTS}, got {self.interpolant!r}"
            )
        if self.interpolant != "none" and self.mode != "cst":
            raise ValueError("CSTConfig.interpolant needs mode 'cst'")
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


@dataclass
class TokenCache:
    """The observed tokens of a window grouped by channel, for each query's own channel.

    Arranged once per window (at encode), so that a decode reads each channel's keys in
    place (`ChannelGroups`).
    """

    kv: list[tuple[Tensor, Tensor]]  # per decoder layer, keys and values (H, B·n_ids, M, D/H)
    coords: Tensor  # (B, n_ids, M, C)
    valid: Tensor  # (B, n_ids, M) which entries are real tokens
    values: Tensor  # (B, n_ids, M, V) the observed values (for the interpolant)

    @classmethod
    def by_channel(
        cls,
        tokens: Tensor,
        coords: Tensor,
        values: Tensor,
        table: Tensor,
        valid: Tensor,
        projections: list[nn.Linear],
        n_heads: int,
    ) -> TokenCache:
        """Group tokens (B, N, D), coords (B, N, C) and values (B, N, V) by a channel table
        (B, n_ids, M), then
        project each decoder layer's keys and values: the tokens are gathered once, not the
        keys and values of every layer."""
        (B, N, D), (_, n_ids, M) = tokens.shape, table.shape
        batch = torch.arange(B, device=table.device)[:, None, None]
        grouped = tokens.reshape(B * N, D).index_select(0, (table + batch * N).reshape(-1))
        kv = []
        for proj in projections:  # (B·n_ids·M, 2D) -> keys, values (H, B·n_ids, M, D/H)
            k, v = proj(grouped).view(B * n_ids, M, 2, n_heads, -1).permute(2, 3, 0, 1, 4)
            kv.append((k.contiguous(), v.contiguous()))
        return cls(kv, coords[batch, table], valid, values[batch, table])

    def to(self, dtype: torch.dtype) -> TokenCache:
        kv = [(k.to(dtype), v.to(dtype)) for k, v in self.kv]
        return replace(self, kv=kv, coords=self.coords.to(dtype), values=self.values.to(dtype))


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


def channel_table(ids: Tensor, mask: Tensor | None, n_ids: int) -> tuple[Tensor, Tensor]:
    """Token indices grouped by channel: (B, n_ids, M) indices and validity, M = max count."""
    B, N = ids.shape
    group = ids if mask is None else torch.where(mask, ids, n_ids)  # padding: an extra group
    position = torch.arange(N, device=ids.device)
    order = (group * N + position).argsort(-1)  # by channel, then by position
    sorted_group = group.gather(1, order)
    counts = torch.zeros(B, n_ids + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(1, group, torch.ones_like(group))
    starts = counts.cumsum(1) - counts
    rank = position - starts.gather(1, sorted_group)
    # M is data-dependent; on the meta device (no data) every token could share a channel
    M = N if ids.device.type == "meta" else max(1, int(counts[:, :n_ids].max()))
    dump = (n_ids + 1) * M  # a slot for padding beyond M, dropped below
    slot = torch.where(rank < M, sorted_group * M + rank, dump)
    table = torch.zeros(B, dump + 1, dtype=torch.long, device=ids.device)
    table.scatter_(1, slot, order)
    valid = torch.zeros(B, dump + 1, dtype=torch.bool, device=ids.device)
    valid.scatter_(1, slot, torch.ones_like(slot, dtype=torch.bool))
    table, valid = table[:, :dump].view(B, n_ids + 1, M), valid[:, :dump].view(B, n_ids + 1, M)
    return table[:, :n_ids], valid[:, :n_ids]


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


def _by_query(t: Tensor, ids: Tensor) -> Tensor:
    """Rows of a per-channel table (Bt, n_ids, ...), Bt ∈ {1, B}, for ids (B, Q): (B, Q, ...)."""
    B, Q = ids.shape
    if t.shape[0] == 1:
        return t[0].index_select(0, ids.reshape(-1)).view(B, Q, *t.shape[2:])
    offset = torch.arange(B, device=ids.device)[:, None] * t.shape[1]
    flat = t.reshape(B * t.shape[1], *t.shape[2:])
    return flat.index_select(0, (ids + offset).reshape(-1)).view(B, Q, *t.shape[2:])


@contextmanager
def manual_attention(model: nn.Module) -> Iterator[None]:
    """Within this block every Attention of `model` uses the hand-written path.

    For double backward through attention (the release's input-Jacobian loss): PyTorch's fast
    attention kernels support neither double backward nor forward-mode AD.
    """
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    saved = [m.flash for m in modules]
    for m in modules:
        m.flash = False
    try:
        yield
    finally:
        for m, flash in zip(modules, saved, strict=True):
            m.flash = flash


class CST(nn.Module):
    """The CST network; `config.mode` picks the "cst" or the paper's architecture.

    Mode "cst": `encode(values, coords, ids, mask) -> Context`, then
    `decode(context, query_coords, query_ids) -> (B, Q, V)` and
    `decode_derivatives(...) -> (K+1, B, Q, V)`.
    Modes "paper" and "transformer": `forward_tokens(values, coords, ids, mask) -> (B, N, V)`,
    a prediction at every (real or dummy) token.
    All modes: `forward(values, coords, ids, mask, query_coords=, query_ids=) -> (B, Q, V)`.
    """

    def __init__(self, config: CSTConfig) -> None:
        super().__init__()
        self.config = config
        D, C = config.d_model, config.coord_dims
        cst = config.mode == "cst"
        self.value_embed = nn.Linear(config.value_dim, D, bias=cst)  # bias-free in the release
        self.id_embed = nn.Embedding(config.n_ids, D) if config.n_ids else None
        if cst:
            self.coord_embed: nn.Module = FourierEncoding(
                C, config.n_fourier, config.fourier_scale, D, config.fourier_seed
            )
            self.latent_embed = None
            if config.n_latent_times:
                times = torch.linspace(0.0, 1.0, config.n_latent_times)
                latent_coords = torch.zeros(config.n_latent_times, C)
                latent_coords[:, 0] = times  # latents have a time, not a place: y = x = 0
                self.register_buffer("latent_coords", latent_coords, persistent=False)
                self.latent_embed = nn.Parameter(torch.zeros(config.latents_per_time, D))
                self.ln_tokens = nn.LayerNorm(D)
                self.read_in = CrossBlock(config, coord_dims=1)  # latents have a time only
            self.encoder = nn.ModuleList(
                [Block(config, pre_norm=True) for _ in range(config.n_layers)]
            )
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
            self.head: nn.Module = nn.Linear(D, config.value_dim)
            if config.interpolant != "none":  # learned: noisy samples call for less of it
                self.interpolant_gain = nn.Parameter(torch.ones(config.value_dim))
            self.channel_gain: nn.Embedding | None = None
            if config.channel_gain and config.n_ids and config.interpolant != "none":
                self.channel_gain = nn.Embedding(config.n_ids, config.value_dim)
            self.readout: Readout | None = None
            if config.readout_rank:
                self.readout = Readout(D, config.value_dim, config.readout_rank)
        else:
            self.coord_embed = nn.Linear(C, D)  # the release's Linear(3 -> dim) on coordinates
            self.ln_embed = nn.LayerNorm(D, eps=1e-12)
            self.encoder = nn.ModuleList(
                [Block(config, pre_norm=False) for _ in range(config.n_layers)]
            )
            self.head = PaperHead(config)

        self.apply(self._init_weights)
        if cst and self.channel_gain is not None:
            nn.init.zeros_(self.channel_gain.weight)
        if cst:
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
        else:  # as released
            nn.init.xavier_normal_(self.head.out.weight, gain=nn.init.calculate_gain("tanh"))

    def _init_weights(self, module: nn.Module) -> None:
        if self.config.mode != "cst":
            return  # paper/transformer keep PyTorch's default init, as the release does
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

    # ---- input checks -------------------------------------------------------------------

    def _check_coords(self, coords: Tensor, name: str) -> None:
        C = self.config.coord_dims
        if coords.dim() != 3 or coords.shape[-1] != C:
            raise ValueError(
                f"{name} must be (B, N, coord_dims={C}), got {tuple(coords.shape)}; "
                "set CSTConfig.coord_dims to the number of coordinates per token"
            )

    def _check_ids(self, ids: Tensor | None, shape: torch.Size, name: str) -> None:
        if self.config.n_ids and ids is None:
            raise ValueError(
                f"this model embeds identities (n_ids={self.config.n_ids}): pass {name}"
            )
        if ids is None:
            return
        if not self.config.n_ids:
            raise ValueError(
                f"{name} given but CSTConfig.n_ids is 0: set n_ids to the number of identities"
            )
        if ids.shape != shape or ids.is_floating_point():
            raise ValueError(
                f"{name} must be integer (B, N) = {tuple(shape)}, "
                f"got {ids.dtype} {tuple(ids.shape)}"
            )

    def _check_tokens(
        self, values: Tensor, coords: Tensor, ids: Tensor | None, mask: Tensor | None
    ) -> None:
        V = self.config.value_dim
        if values.dim() != 3 or values.shape[-1] != V:
            raise ValueError(
                f"values must be (B, N, value_dim={V}), got {tuple(values.shape)}; "
                "set CSTConfig.value_dim to the length of a token's value vector"
            )
        self._check_coords(coords, "coords")
        if coords.shape[:2] != values.shape[:2]:
            raise ValueError(
                f"coords {tuple(coords.shape)} and values {tuple(values.shape)} differ in (B, N)"
            )
        self._check_ids(ids, values.shape[:2], "ids")
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != values.shape[:2]:
                raise ValueError(
                    f"mask must be bool (B, N) = {tuple(values.shape[:2])}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            if not bool(mask.any(-1).all()):
                raise ValueError(
                    "every sample needs at least one observed token (a mask row is all False)"
                )

    def _require(self, cst: bool, method: str) -> None:
        if (self.config.mode == "cst") != cst:
            use = "forward_tokens (or forward)" if cst else "encode/decode (or forward)"
            raise ValueError(f"{method}() is not available in mode {self.config.mode!r}: use {use}")

    # ---- shared -------------------------------------------------------------------------

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
        if self.config.mode == "cst":
            return self.decode(self.encode(values, coords, ids, mask), query_coords, query_ids)
        tokens = add_dummy_tokens(
            values, coords, query_coords, mask=mask, ids=ids, dummy_ids=query_ids
        )
        out = self.forward_tokens(tokens.values, tokens.coords, tokens.ids, tokens.mask)
        return out[:, values.shape[1] :]  # the dummies' predictions

    # ---- mode "cst" ---------------------------------------------------------------------

    def encode(
        self, values: Tensor, coords: Tensor, ids: Tensor | None = None, mask: Tensor | None = None
    ) -> Context:
        """Encode the observed tokens of a window (see `forward` for shapes) into a Context."""
        self._require(cst=True, method="encode")
        self._check_tokens(values, coords, ids, mask)
        x = drop.dropout(self.embed_tokens(values, coords, ids), self.config.dropout, self.training)
        key_mask = _key_padding(mask)
        if self.latent_embed is None:
            for block in self.encoder:
                x = block(x, mask=key_mask)
            memory, memory_mask = self.ln_memory(x), mask
            return Context(
                memory,
                [block.attn.keys_values(memory) for block in self.decoder],
                memory_mask,
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
        bias = self.read_in.bias(latent_coords, coords, dims=1)  # type: ignore[misc]
        z = self.read_in(latents[None], k, v, key_mask, bias)[0]  # (B, L, D)
        for block in self.encoder:
            z = block(z)
        memory = self.ln_memory(z)
        cache = None
        if self.id_embed is not None:
            table, valid = channel_table(ids, mask, self.config.n_ids)  # type: ignore[arg-type]
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
        self._require(cst=True, method="decode")
        self._check_coords(coords, "query coords")
        self._check_ids(ids, coords.shape[:2], "query ids")
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
        self._require(cst=True, method="decode_derivatives")
        self._check_coords(coords, "query coords")
        self._check_ids(ids, coords.shape[:2], "query ids")
        dtype = self.head.weight.dtype
        with _autocast_off(coords.device):
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
        mask = None if context.mask is None else _key_padding(context.mask.expand(B, -1))
        memory_coords = None if context.coords is None else context.coords.expand(B, -1, -1)
        memory_ids = None if context.ids is None else context.ids.expand(B, -1)
        cache = context.tokens
        if cache is not None:  # each query's own channel: M tokens per query
            own_mask = _by_query(cache.valid, ids)[:, None]  # type: ignore[arg-type]
            own_coords = _by_query(cache.coords, ids)  # type: ignore[arg-type]  # (B, Q, M, C)
            groups = ChannelGroups.of(
                ids, cache.valid.shape[0], self.config.n_ids, cache.valid.shape[-1]
            )  # type: ignore[arg-type]
        dims = 1 if context.time_only else None
        for i, (block, (k, v)) in enumerate(zip(self.decoder, context.kv, strict=True)):
            bias = None
            if block.bias is not None and memory_coords is not None:
                bias = block.bias(coords, memory_coords, direction, order, ids, memory_ids, dims)
            local = None
            if cache is not None and block.local_bias is not None:
                kt, vt = (groups.rows_of(t) for t in cache.kv[i])
                local = LocalKeys(
                    kt, vt, groups, block.local_bias(coords, own_coords, direction, order), own_mask
                )
            x = block(x, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), mask, bias, local)
        x = taylor.layer_norm(x, self.ln_out.weight, self.ln_out.bias, self.ln_out.eps)
        out = taylor.linear(x, self.head.weight, self.head.bias)
        if self.config.interpolant == "none":
            return out
        if cache is not None:
            key_times, key_valid = own_coords[..., 0], own_mask[:, 0]
            key_values = _by_query(cache.values, ids)  # type: ignore[arg-type]
        else:  # the memory is the observed tokens themselves
            assert context.values is not None and context.coords is not None
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
            if cache is not None:  # once per channel, then per query
                keys = self.readout.key(self.coord_embed(cache.coords.to(out.dtype)))
                keys = _by_query(keys, ids)  # type: ignore[arg-type]
            else:
                keys = self.readout.key(self.coord_embed(context.coords[:, None].to(out.dtype)))
            out = out + self.readout(x, keys, key_values, key_valid)
        return out

    # ---- modes "paper" and "transformer" ------------------------------------------------

    def forward_tokens(
        self, values: Tensor, coords: Tensor, ids: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """The paper's network: a prediction (B, N, V) at every token, real or dummy.

        Build real + dummy tokens with `dummies.add_dummy_tokens`; shapes as in `forward`.
        """
        self._require(cst=False, method="forward_tokens")
        self._check_tokens(values, coords, ids, mask)
        x = self.ln_embed(self.embed_tokens(values, coords, ids))
        x = drop.dropout(x, self.config.dropout, self.training)  # (B, N, D)
        key_mask = _key_padding(mask)
        for block in self.encoder:
            x = block(x, mask=key_mask)
        return self.head(x)
