"""Building blocks shared by both architectures: attention, MLP, transformer blocks.

`Attention`, `MLP` and `Block` serve the paper's network (`paper.py`) and the CST's encoder
(`cst.py`); `CrossBlock` and `CoordBias` are the CST's cross-attention to fixed keys and
values, which also runs on Taylor jets (`taylor`) so that the query decoder's derivatives
with respect to the query coordinate are exact. `NetworkConfig` holds the settings every
block reads; each architecture's config extends it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cst_neuro.model import dropout as drop
from cst_neuro.model import taylor

if TYPE_CHECKING:
    from cst_neuro.model._gather import LocalKeys


MAX_PARAMS = 200_000_000  # a network larger than this (800 MB of fp32 weights) is refused


@dataclass
class NetworkConfig:
    """Settings every architecture has: token layout, widths, regularisation."""

    value_dim: int = 1  # V: 1 for ROI traces, p*p for p×p patches, 2 for the IE spirals
    coord_dims: int = 3  # C: 3 = (t, y, x), 1 = time only
    n_ids: int = 0  # size of the learned identity table (e.g. ROIs in a recording); 0 = none
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4  # encoder blocks
    d_ff: int = 384
    dropout: float = 0.1
    attn_dropout: float = 0.0
    input_noise: float = 0.0  # sd of Gaussian noise added to input values in training (paper: 0.1)
    use_sdpa: bool = True  # False forces the hand-written attention everywhere

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.d_model % self.n_heads:
            raise ValueError(
                f"{name}.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        for field in ("value_dim", "coord_dims", "d_model", "n_heads", "d_ff"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field} must be at least 1, got {getattr(self, field)}")
        for field in ("n_ids", "n_layers"):
            if getattr(self, field) < 0:
                raise ValueError(f"{name}.{field} must be 0 or more, got {getattr(self, field)}")
        for field in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{name}.{field} must be in [0, 1), got {getattr(self, field)}")
        if self.input_noise < 0:
            raise ValueError(f"{name}.input_noise must be >= 0, got {self.input_noise}")
        n = self.estimated_params()
        if n > MAX_PARAMS:
            raise ValueError(
                f"{name} describes a network of about {n:.3g} parameters "
                f"({4 * n / 2**30:.3g} GiB in fp32); at most {MAX_PARAMS:.0e}"
            )

    def blocks(self) -> int:
        """Transformer blocks of the network (what its size grows with)."""
        return self.n_layers

    def estimated_params(self) -> int:
        """About how many parameters the network has (attention, MLP, identity table)."""
        D = self.d_model
        per_block = 4 * D * D + 2 * D * self.d_ff
        return self.blocks() * per_block + self.n_ids * D


def check_coords(config: NetworkConfig, coords: Tensor, name: str) -> None:
    """ValueError unless `coords` is (B, N, coord_dims)."""
    C, kind = config.coord_dims, type(config).__name__
    if coords.dim() != 3 or coords.shape[-1] != C:
        raise ValueError(
            f"{name} must be (B, N, coord_dims={C}), got {tuple(coords.shape)}; "
            f"set {kind}.coord_dims to the number of coordinates per token"
        )


def check_ids(
    config: NetworkConfig,
    ids: Tensor | None,
    shape: torch.Size,
    name: str,
    *,
    optional: bool = False,
) -> None:
    """ValueError unless `ids` are integer `shape`: required when the config embeds
    identities, and (unless `optional`, for a model that reads channels without a table of
    its own) refused when it does not."""
    kind = type(config).__name__
    if config.n_ids and ids is None:
        raise ValueError(f"this model embeds identities (n_ids={config.n_ids}): pass {name}")
    if ids is None:
        return
    if not config.n_ids and not optional:
        raise ValueError(
            f"{name} given but {kind}.n_ids is 0: set n_ids to the number of identities"
        )
    if ids.shape != shape or ids.is_floating_point():
        raise ValueError(
            f"{name} must be integer (B, N) = {tuple(shape)}, got {ids.dtype} {tuple(ids.shape)}"
        )


def check_tokens(
    config: NetworkConfig,
    values: Tensor,
    coords: Tensor,
    ids: Tensor | None,
    mask: Tensor | None,
    *,
    ids_optional: bool = False,
) -> None:
    """ValueError naming the argument whose shape or type does not fit the config."""
    V, kind = config.value_dim, type(config).__name__
    if values.dim() != 3 or values.shape[-1] != V:
        raise ValueError(
            f"values must be (B, N, value_dim={V}), got {tuple(values.shape)}; "
            f"set {kind}.value_dim to the length of a token's value vector"
        )
    check_coords(config, coords, "coords")
    if coords.shape[:2] != values.shape[:2]:
        raise ValueError(
            f"coords {tuple(coords.shape)} and values {tuple(values.shape)} differ in (B, N)"
        )
    check_ids(config, ids, values.shape[:2], "ids", optional=ids_optional)
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


def autocast_off(device: torch.device) -> AbstractContextManager[object]:
    """A block with autocast off on `device` (a no-op where autocast does not exist)."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know, e.g. "meta"
        return nullcontext()


def key_padding(mask: Tensor | None) -> Tensor | None:
    """(B, N) True-for-real mask -> (B, 1, 1, N), broadcast over heads and queries."""
    return None if mask is None else mask[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention: queries from x, keys and values from a source (x itself by default).

    Uses torch's scaled_dot_product_attention when available (checked once, here), else a
    hand-written path doing the same maths. `forward_jet` propagates Taylor jets of the
    queries through attention to fixed keys and values (the query decoder).
    """

    def __init__(self, config: NetworkConfig) -> None:
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
        one softmax with the N common keys. Plain values (order 0) take the fast kernel,
        with own keys when the queries are arranged one channel group per batch row.
        """
        q = self.split_heads(taylor.linear(x, self.q.weight, self.q.bias))  # (K+1, B, H, Q, hd)
        if x.shape[0] == 1 and (local is None or local.groups is None):
            bias = None if bias is None else bias.squeeze(0)  # views: no zero-filled gradients
            if local is not None:  # [common keys ; the row's own keys]: `bias` covers both
                k, v = local.joined(k, v)
            y = self.attend(q.squeeze(0), k, v, mask, bias).unsqueeze(0)
        else:
            scale = 1.0 / math.sqrt(k.shape[-1])
            scores = _masked_jet((q @ k.transpose(-2, -1)) * scale, bias, mask)
            n = scores.shape[-1]
            groups = None if local is None else local.groups
            if local is not None:
                assert groups is not None  # arranged queries have order 0: the branch above
                own = groups.matmul(q, local.k.transpose(-2, -1)) * scale
                scores = torch.cat([scores, _masked_jet(own, local.bias, local.mask)], -1)
            p = taylor.dropout(taylor.softmax(scores), self.attn_dropout, self.training)
            common, own_p = p.split([n, p.shape[-1] - n], -1)
            y = common @ v  # (K+1, B, H, Q, hd)
            if local is not None and groups is not None:
                y = y + groups.matmul(own_p, local.v)
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


class CoordBias(nn.Module):
    """A learned attention bias from where a query is relative to a key, exact in the query.

    bias_h(c_q, c_k) = -Σ_d γ_hd (c_q,d - c_k,d)² + β_h [id_q = id_k]: each head weighs keys
    by a Gaussian of their distance to the query (an ALiBi-like relative encoding) and,
    with identities, prefers the query's own channel. γ_hd = exp(θ_hd) starts at widths
    spread geometrically over heads, from 1/64 to 1/2 of a window (``window`` time units
    along time, a field of view along y and x). A query's coordinate
    along a line c + s u is linear in s, so the bias is a polynomial of degree 2 in s and its
    Taylor jet is exact and closed-form: attention can be local from the first step without
    giving up exact derivatives.
    """

    def __init__(self, n_heads: int, coord_dims: int, use_ids: bool, window: float = 1.0) -> None:
        super().__init__()
        widths = torch.logspace(math.log10(1 / 64), math.log10(1 / 2), n_heads)
        widths = widths[:, None].repeat(1, coord_dims)  # (H, C)
        widths[:, 0] *= window
        self.log_gamma = nn.Parameter((1.0 / (2 * widths**2)).log())
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
        (B, Q, C; needed when order > 0), against keys at (B, N, C), or per query
        (B, Q, N, C); `dims` keeps only the first coordinates (1 = time: latents have no
        place)."""
        gamma = self.log_gamma.exp()[:, :dims].T.to(coords.dtype)  # (C', H)
        coords, key_coords = coords[..., :dims], key_coords[..., :dims]
        if key_coords.dim() == 3:
            key_coords = key_coords[:, None]
        delta = coords[:, :, None, :] - key_coords  # (B, Q, N, C')
        jet = [_by_head(delta * delta, -gamma)]  # (B, H, Q, N)
        if order >= 1:
            if direction is None:
                raise ValueError("a bias jet of order 1 or more needs the query's direction")
            u = direction[..., :dims].to(coords.dtype)[:, :, None, :]
            jet.append(_by_head(delta * u, -2 * gamma))
        if order >= 2:
            jet.append(_by_head(u * u, -gamma).expand_as(jet[0]))
        if order > 2:
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


class MLP(nn.Module):
    """Position-wise feed-forward: Linear, GELU, Linear, dropout."""

    def __init__(self, config: NetworkConfig) -> None:
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
    """Self-attention then MLP in residual branches: pre-LN (the CST) or post-LN (the release)."""

    def __init__(self, config: NetworkConfig, pre_norm: bool) -> None:
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
    the scores get a `CoordBias` (relative coordinates, time in units of which a window
    spans `window`, and identities with `use_ids`);
    with `local`, each query also attends to keys of its own channel (`LocalKeys`), made by
    `local_kv` from the raw tokens, with their own bias `local_bias`.
    """

    def __init__(
        self,
        config: NetworkConfig,
        coord_dims: int = 0,
        use_ids: bool = False,
        local: bool = False,
        window: float = 1.0,
    ) -> None:
        super().__init__()
        D, H = config.d_model, config.n_heads
        self.ln_1 = nn.LayerNorm(D)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = MLP(config)
        self.bias = CoordBias(H, coord_dims, use_ids, window) if coord_dims else None
        self.local_kv = nn.Linear(D, 2 * D) if local else None
        # a query and its own channel's tokens share a place: only time tells them apart
        self.local_bias = CoordBias(H, 1, False, window) if local else None

    def joint_bias(
        self, coords: Tensor, key_coords: Tensor, own_coords: Tensor, own_valid: Tensor
    ) -> Tensor:
        """Order-0 bias (1, B, H, Q, N + M) of queries (B, Q, C) against common keys at
        (B, N, C) and then each batch row's own keys at (B, 1, M, C), -inf where own_valid
        (B, 1, 1, M) is False: `bias` and `local_bias` in one tensor, entry for entry the
        values they give, written once (the common keys are latents: a time and no ids)."""
        assert self.bias is not None and self.local_bias is not None
        assert self.bias.id_weight is None  # a decoder reading latents has no identities
        N, M = key_coords.shape[1], own_coords.shape[2]
        key_times = torch.cat([key_coords[..., 0], own_coords[:, 0, :, 0]], 1)  # (B, N + M)
        gamma = torch.cat(
            [self.bias.log_gamma[:, :1].expand(-1, N), self.local_bias.log_gamma.expand(-1, M)], 1
        ).exp()  # (H, N + M)
        delta = coords[:, :, None, 0] - key_times[:, None, :]  # (B, Q, N + M)
        out = (delta * delta)[:, None] * -gamma.to(coords.dtype)[:, None, :]  # (B, H, Q, N + M)
        out[..., N:].masked_fill_(~own_valid, float("-inf"))
        return out[None]

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
