"""The paper's released CST architecture, for modes "paper" and "transformer" (baselines).

de Oliveira Fonseca, Zappala, Ortega Caro, van Dijk, "Continuous Spatiotemporal Transformer",
ICML 2023, and its release github.com/vandijklab/CST (METHOD.md): real tokens plus dummy
tokens at the query coordinates (values linearly interpolated, see `dummies`), Gaussian
input noise in training, a value embedding plus a linear embedding of the coordinates, a
post-LayerNorm encoder over all tokens jointly and the release's head at every token. Mode
"paper" trains it with the release's input-Jacobian loss, mode "transformer" with plain MSE
(`modes`). Unlike `cst.CST`, a prediction depends on which other points were queried.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cst_neuro.model import dropout as drop
from cst_neuro.model.dummies import add_dummy_tokens
from cst_neuro.model.layers import Block, NetworkConfig, check_tokens, key_padding


@dataclass
class PaperConfig(NetworkConfig):
    """The released network's settings (the release: dim 32, 4 layers, 4 heads, ff 3072)."""


class PaperHead(nn.Module):
    """The release's output head: Linear, GELU, LayerNorm, then a bias-free Linear to values."""

    def __init__(self, config: PaperConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_model)
        self.ln = nn.LayerNorm(config.d_model, eps=1e-12)
        self.out = nn.Linear(config.d_model, config.value_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.ln(F.gelu(self.fc(x))))


class PaperCST(nn.Module):
    """The released network: `forward_tokens(values, coords, ids, mask) -> (B, N, V)`, a
    prediction at every (real or dummy) token; `forward` places dummies at the queries."""

    def __init__(self, config: PaperConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model
        self.value_embed = nn.Linear(config.value_dim, D, bias=False)  # bias-free as released
        self.id_embed = nn.Embedding(config.n_ids, D) if config.n_ids else None
        self.coord_embed = nn.Linear(config.coord_dims, D)  # Linear(3 -> dim) on coordinates
        self.ln_embed = nn.LayerNorm(D, eps=1e-12)
        self.encoder = nn.ModuleList(
            [Block(config, pre_norm=False) for _ in range(config.n_layers)]
        )
        self.head = PaperHead(config)
        # PyTorch's default init elsewhere, as the release has
        nn.init.xavier_normal_(self.head.out.weight, gain=nn.init.calculate_gain("tanh"))

    def num_params(self, exclude_ids: bool = False) -> int:
        """Number of trainable parameters; `exclude_ids` leaves out the identity table."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_ids and self.id_embed is not None:
            n -= self.id_embed.weight.numel()
        return n

    def forward_tokens(
        self, values: Tensor, coords: Tensor, ids: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """A prediction (B, N, V) at every token, real or dummy (`dummies.add_dummy_tokens`)."""
        check_tokens(self.config, values, coords, ids, mask)
        if self.training and self.config.input_noise > 0:
            values = values + self.config.input_noise * torch.randn_like(values)
        x = self.value_embed(values) + self.coord_embed(coords)
        if self.id_embed is not None:
            x = x + self.id_embed(ids)
        x = drop.dropout(self.ln_embed(x), self.config.dropout, self.training)  # (B, N, D)
        padding = key_padding(mask)
        for block in self.encoder:
            x = block(x, mask=padding)
        return self.head(x)

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
        """Predictions (B, Q, V) at query coordinates: dummies among the real tokens."""
        tokens = add_dummy_tokens(
            values, coords, query_coords, mask=mask, ids=ids, dummy_ids=query_ids
        )
        out = self.forward_tokens(tokens.values, tokens.coords, tokens.ids, tokens.mask)
        return out[:, values.shape[1] :]  # the dummies' predictions
